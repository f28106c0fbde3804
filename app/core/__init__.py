"""The ground floor: errors and their codes, and the timed stages a batch reports; known to every room, importing
none."""
