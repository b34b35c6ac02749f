"""Qt-free core of napari-sam: it never imports napari or Qt (enforced by import-linter)."""
