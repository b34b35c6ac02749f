"""Prompt files for batch segmentation: the CSV and JSON forms, and one-line errors naming the
file, the line (or key) and the field."""

from __future__ import annotations

import json

import pytest

from napari_sam.core.errors import PromptError
from napari_sam.core.prompt_files import image_name, read_prompt_file

CSV_HEADER = "image,kind,row0,col0,row1,col1,row,col,label"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_boxes_and_points_in_the_command_line_forms(tmp_path):
    path = write(
        tmp_path,
        "p.csv",
        f"{CSV_HEADER}\n"
        "a.tif,box,10,12,40,50,,,\n"
        "\n"  # blank lines are skipped
        "b.tif,point,,,,,20,30,\n"
        "a.tif,point,,,,,25,35,0\n"
        "data/b.tif,box,1,2,3,4,,,\n",
    )
    prompts = read_prompt_file(path)
    assert list(prompts) == ["a.tif", "b.tif"]
    a, b = prompts["a.tif"], prompts["b.tif"]
    assert a.boxes == [[10, 12, 40, 50]] and a.points == [[25, 35, 0]]
    assert b.points == [[20, 30, 1]] and b.boxes == [[1, 2, 3, 4]]  # label 1 by default
    assert a.volume is False and b.volume is False
    assert a.where == f"{path} lines 2-5" and b.where == f"{path} lines 4-6"


def test_csv_with_slices_and_any_column_order(tmp_path):
    path = write(
        tmp_path,
        "p.csv",
        "\ufeffKind,Image,Z,Row,Col,Label,Row0,Col0,Row1,Col1\n"  # BOM and capitals, as Excel
        "box,scan.nii.gz,3,,,,5,6,30,40\n"
        "point,scan.nii.gz,4,12,13,1,,,,\n",
    )
    scan = read_prompt_file(path)["scan.nii.gz"]
    assert scan.volume is True
    assert scan.boxes == [[3, 5, 6, 30, 40]] and scan.points == [[4, 12, 13, 1]]
    assert scan.as_dict() == {
        "boxes": [[3, 5, 6, 30, 40]],
        "points": [[4, 12, 13, 1]],
        "volume": True,
    }


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", r"p\.csv: empty; the first line names the columns"),
        ("image,kind,row0,col0,row1,col1,rwo\n", r"p\.csv line 1: unknown column 'rwo'"),
        ("image,row0,col0,row1,col1\n", r"p\.csv line 1: missing column 'kind'"),
        ("image,kind,row,row\n", r"p\.csv line 1: column 'row' appears twice"),
        (f"{CSV_HEADER}\n", r"p\.csv: no prompts"),
        (f"{CSV_HEADER}\na.tif,circle,1,2,3,4,,,\n", r"line 2, field 'kind': 'circle' is not"),
        (f"{CSV_HEADER}\na.tif,box,1,2,x,4,,,\n", r"line 2, field 'row1': 'x' is not a number"),
        (f"{CSV_HEADER}\na.tif,box,1,2,nan,4,,,\n", r"line 2, field 'row1': 'nan' is not a fin"),
        (f"{CSV_HEADER}\na.tif,box,1,2,,4,,,\n", r"line 2, field 'row1': empty \(a box needs"),
        (f"{CSV_HEADER}\na.tif,box,1,2,3,4,5,,\n", r"line 2, field 'row': not used by a box"),
        (f"{CSV_HEADER}\na.tif,point,1,,,,5,6,\n", r"line 2, field 'row0': not used by a point"),
        (f"{CSV_HEADER}\na.tif,point,,,,,5,6,2\n", r"line 2, field 'label': '2' must be 1"),
        (f"{CSV_HEADER}\n,point,,,,,5,6,1\n", r"line 2, field 'image': empty"),
        (f"{CSV_HEADER}\na.tif,point,,,,,5,6\n", r"line 2: 8 fields, the header has 9"),
        ("image,kind,z,row,col\na.tif,point,2.5,1,2\n", r"line 2, field 'z': '2.5' is not a sl"),
        (
            "image,kind,z,row,col\n\na.tif,point,2,1,2\na.tif,point,,1,2\n",
            r"line 4, field 'z': a\.tif's prompts on line 3 have z; give z on all or none",
        ),
    ],
)
def test_csv_errors_name_file_line_and_field(tmp_path, text, match):
    path = write(tmp_path, "p.csv", text)
    with pytest.raises(PromptError, match=match) as info:
        read_prompt_file(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_json_takes_the_command_line_forms(tmp_path):
    data = {
        "a.tif": {"boxes": [[10, 12, 40, 50]], "points": [[20, 30], [21, 31, 0]]},
        "/data/scan.nii.gz": {"boxes": [[3, 5, 6, 30, 40]], "points": [[4, 12, 13, 1]]},
        "c.png": {"points": [[1.5, 2.5]]},
    }
    path = write(tmp_path, "p.json", json.dumps(data))
    prompts = read_prompt_file(path)
    assert list(prompts) == ["a.tif", "scan.nii.gz", "c.png"]
    assert prompts["a.tif"].points == [[20, 30], [21, 31, 0]]
    assert prompts["scan.nii.gz"].boxes == [[3, 5, 6, 30, 40]]
    assert prompts["c.png"].boxes == [] and prompts["c.png"].volume is None
    assert prompts["a.tif"].where == f"{path}, image 'a.tif'"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"a.tif": {"boxes": [[1, 2, 3, 4]]}\n "b.tif": {}}', r"line 2 column 2: not valid JSON"),
        ("[]", r"expected an object"),
        ('{"a.tif": {"boxes": [[1,2,3,4]]}, "a.tif": {}}', r"key 'a\.tif' appears twice"),
        ('{"a.tif": [[1, 2, 3, 4]]}', r"image 'a\.tif': expected \{\"boxes\""),
        ('{"a.tif": {"box": [[1, 2, 3, 4]]}}', r"image 'a\.tif', field 'box': unknown"),
        (
            '{"a.tif": {"boxes": [[1, 2, 3]]}}',
            r"field 'boxes\[0\]': expected 4 or 5 numbers, got 3",
        ),
        ('{"a.tif": {"points": [[1, "2"]]}}', r"field 'points\[0\]': expected a list of numbers"),
        ('{"a.tif": {"points": [[1, true]]}}', r"field 'points\[0\]': expected a list of numbers"),
        ('{"a.tif": {"points": [[1, 2, 3, 4, 5]]}}', r"points\[0\]': expected 2 or 3 or 4 numb"),
        ('{"a.tif": {"points": [[0, 1, 2, 5]]}}', r"field 'points\[0\]': label must be 1 or 0"),
        ('{"a.tif": {"points": {"row": 1}}}', r"field 'points': expected a list"),
        ('{"a.tif": {"boxes": []}}', r"image 'a\.tif': no boxes and no points"),
        ('{"x/a.tif": {"points": [[1, 2]]}, "y/a.tif": {"points": [[1, 2]]}}', r"given twice"),
    ],
)
def test_json_errors_name_file_and_field(tmp_path, text, match):
    path = write(tmp_path, "p.json", text)
    with pytest.raises(PromptError, match=match) as info:
        read_prompt_file(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_unreadable_file(tmp_path):
    with pytest.raises(PromptError, match=r"cannot read prompt file .*missing\.csv"):
        read_prompt_file(tmp_path / "missing.csv")
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"image,kind\n\xe9.tif,point\n")
    with pytest.raises(PromptError, match="cannot read prompt file"):
        read_prompt_file(path)


@pytest.mark.parametrize(
    ("given", "name"),
    [("a.tif", "a.tif"), ("dir/a.tif", "a.tif"), ("C:\\data\\a.tif", "a.tif"), ("dcm/", "dcm")],
)
def test_image_name_is_the_last_part(given, name):
    assert image_name(given) == name
