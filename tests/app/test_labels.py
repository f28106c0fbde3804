"""The API speaks labels: /generate, /encode and /interpolate take `label` (a class number or a class name, any
case; `digit` its alias), /encode answers the class's number and name, /model lists the classes, and a model whose
classes are not digits (FASHION's, its uploads framed) is served as one whose classes are."""

from __future__ import annotations

import pytest

from tests.conftest import FASHION, D, drawing, encoded, metric, pixels, problem, upload


def test_model_lists_the_classes(client, fashion_client):
    assert client.get("/model").json()["classes"] == [{"label": i, "name": str(i)} for i in range(10)]
    shown = fashion_client.get("/model").json()
    assert shown["classes"] == [{"label": i, "name": name} for i, name in enumerate(FASHION)]
    assert shown["labels"] == FASHION and shown["preprocessing"] == "frame"


@pytest.mark.parametrize("given", [3, "3", [3]])
def test_label_and_its_alias_digit_draw_the_same(client, given):
    by_digit = client.post("/generate", json={"digit": given, "n": 2, "seed": 1})
    by_label = client.post("/generate", json={"label": given, "n": 2, "seed": 1})
    assert by_digit.status_code == by_label.status_code == 200 and by_digit.content == by_label.content


def test_a_class_is_named_by_number_or_name_in_any_case(fashion_client):
    answers = [
        fashion_client.post("/generate", json={"label": given, "n": 2, "seed": 1}).content
        for given in (4, "coat", "COAT", "Coat", "4")
    ]
    assert len(set(answers)) == 1 and pixels(answers[0]).shape == (32, 62)
    rows = fashion_client.post("/generate", json={"label": ["sandal", 7, "Ankle boot"], "n": 1, "seed": 2},
                               headers={"Accept": "application/json"}).json()  # fmt: skip
    assert rows["digits"] == [5, 7, 9] and rows["labels"] == [5, 7, 9]


@pytest.mark.parametrize(
    ("body", "field"),
    [({"label": "boot"}, "label"), ({"digit": "boot"}, "digit"), ({"label": ["coat", 10]}, "label")],
)
def test_an_unknown_class_is_a_422_listing_the_valid_ones(fashion_client, body, field):
    p = problem(fashion_client.post("/generate", json=body), 422)
    assert "0 't-shirt/top'" in p["detail"] and "9 'ankle boot'" in p["detail"]
    assert p["errors"][0]["loc"] == ["body", field]
    p = problem(upload(fashion_client, encoded(drawing()), "boots"), 422)
    assert "9 'ankle boot'" in p["detail"] and p["errors"][0]["loc"] == ["body", "digit"]


def test_an_unknown_digit_names_the_digits(client):
    p = problem(client.post("/generate", json={"label": "seven"}), 422)
    assert "no class 'seven'; its classes are 0-9" in p["detail"]


@pytest.mark.parametrize("path", ["/generate", "/interpolate"])
def test_label_and_digit_together_or_neither_is_a_422(client, path):
    ends = {"from": [0.0] * D, "to": [1.0] * D} if path == "/interpolate" else {}
    assert "not both" in problem(client.post(path, json={"label": 1, "digit": 1, **ends}), 422)["detail"]
    assert "`label` is required" in problem(client.post(path, json=ends), 422)["detail"]


def test_encode_answers_the_label_its_name_and_for_a_digit_model_the_digit(client):
    given = client.post("/encode", files={"file": ("d.png", encoded(drawing()))}, data={"label": "7"}).json()
    assert list(given)[:5] == ["model_id", "digit", "label", "name", "inferred"]
    assert (given["digit"], given["label"], given["name"], given["inferred"]) == (7, 7, "7", False)
    read = upload(client, encoded(drawing())).json()
    assert read["digit"] == read["label"] and read["name"] == str(read["label"]) and len(read["probabilities"]) == 10


def test_encode_of_a_model_whose_classes_are_not_digits(fashion_client):
    read = upload(fashion_client, encoded(drawing())).json()
    assert "digit" not in read and read["name"] == FASHION[read["label"]] and len(read["probabilities"]) == 10
    r = fashion_client.post("/encode", files={"file": ("d.png", encoded(drawing()))}, data={"label": "Sneaker"})
    assert (r.json()["label"], r.json()["name"], r.json()["inferred"]) == (7, "sneaker", False)


def test_interpolate_takes_a_class_name(fashion_client):
    body = {"from": [0.0] * D, "to": [1.0] * D, "steps": 3}
    by_name = fashion_client.post("/interpolate", json={"label": "Bag", **body})
    by_number = fashion_client.post("/interpolate", json={"digit": 8, **body})
    assert by_name.status_code == 200 and by_name.content == by_number.content


def test_images_are_counted_by_class_number(fashion_client):
    series = 'cvae_images_generated_total{digit="9",model="digits"}'
    before = metric(fashion_client, series) if series in fashion_client.get("/metrics").text else 0.0
    assert fashion_client.post("/generate", json={"label": "ankle boot", "n": 3, "seed": 1}).status_code == 200
    assert metric(fashion_client, series) == before + 3


def test_a_blank_upload_is_refused_in_the_models_words(client, fashion_client):
    blank = encoded(drawing().point(lambda v: 255))
    assert problem(upload(client, blank), 422)["title"] == "No digit in the image"
    assert problem(upload(fashion_client, blank), 422)["title"] == "Nothing in the image"
