// Swagger UI for GET /docs, from the copy in static/vendor/swagger-ui (no CDN). FastAPI's own /docs page sets
// these options in an inline script, which the page's Content-Security-Policy forbids.
window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null, // the default sends the document to an outside validator for its badge
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
