"""services.webapp.inputs: drawings become rows the way scikit-learn's digits were made,
forms and CSV files become rows, and bad input is named precisely."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from services.client import Feature, Prediction
from services.webapp import inputs
from services.webapp.inputs import Image, InputError

PIXELS = [Feature(f"pixel_{i}", 0, 16) for i in range(64)]
DIGITS = Image(side=8, high=16)
SEVEN = [[(10.0, 10.0), (90.0, 10.0), (40.0, 190.0)]]


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        (PIXELS, DIGITS),
        ([Feature(f"pixel_{i}") for i in range(64)], DIGITS),  # no ranges: digits' 0..16
        ([Feature(f"pixel_{i}", 0, 255) for i in range(16)], Image(4, 255)),
        ([Feature(f"pixel_{i}", 0, 16) for i in range(63)], None),  # not a square
        ([Feature(f"p{i}", 0, 16) for i in range(64)], None),  # not pixels
        ([*PIXELS[:63], Feature("pixel_63", 0, 20)], None),  # mixed ranges
        ([Feature("alcohol", 0, 200)] * 4, None),
    ],
)
def test_image_models_are_recognised_from_their_features(
    features: list[Feature], expected: Image | None
) -> None:
    assert inputs.image_of(features) == expected


def test_a_drawing_becomes_8x8_counts_of_4x4_blocks_like_sklearn_digits() -> None:
    row = inputs.rasterize(SEVEN, DIGITS)
    assert len(row) == 64
    assert all(v == int(v) and 0 <= v <= 16 for v in row)
    # As much ink as the training images carry (~30% of the 32x32 bitmap, every class).
    training_ink = load_digits().data.sum(axis=1).mean()
    assert abs(sum(row) - training_ink) < 0.05 * training_ink
    grid = np.array(row).reshape(8, 8)
    # Full height like the training digits: ink in the top and the bottom rows.
    assert grid[0].sum() > 0 and grid[7].sum() > 0
    # The 7's bar is the top row; its foot ends left of centre.
    assert grid[0].sum() > grid[7].sum()
    assert grid[7, :4].sum() > grid[7, 4:].sum()


def test_the_canvas_size_and_position_do_not_change_what_the_model_sees() -> None:
    moved = [[(x * 2.5 + 300, y * 2.5 - 40) for x, y in s] for s in SEVEN]
    assert inputs.rasterize(moved, DIGITS) == inputs.rasterize(SEVEN, DIGITS)


def test_a_vertical_stroke_is_a_centred_column() -> None:
    grid = np.array(inputs.rasterize([[(50, 0), (50, 100)]], DIGITS)).reshape(8, 8)
    assert (grid == grid[:, ::-1]).all()  # symmetric about the centre
    assert grid[:, [0, 1, 6, 7]].sum() == 0
    assert grid[:, 3:5].sum() > 0.75 * grid.sum()  # mostly the two middle columns


def test_a_single_dot_still_gives_a_row() -> None:
    row = inputs.rasterize([[(5, 5)]], DIGITS)
    assert len(row) == 64 and sum(row) > 0


def test_other_ranges_scale_the_counts() -> None:
    counts = inputs.rasterize(SEVEN, DIGITS)
    scaled = inputs.rasterize(SEVEN, Image(8, 1.0))
    assert scaled == pytest.approx([c / 16 for c in counts])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not JSON"),
        ("{}", "a list of at most"),
        ("[]", "draw something first"),
        ("[[]]", "draw something first"),
        ("[[[1, 2, 3]]]", "two finite numbers"),
        ('[[[1, "2"]]]', "two finite numbers"),
        ("[[[1, true]]]", "two finite numbers"),
        ("[[[1, NaN]]]", "two finite numbers"),
        ("[[" + ",".join(["[1, 2]"] * 5001) + "]]", "5001 points; at most 5000"),
        ("[" * 5000 + "]" * 5000, "nested too deep"),  # was a RecursionError: a 500
    ],
)
def test_bad_strokes_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        inputs.parse_strokes(text)
    assert caught.value.field == "strokes"


WINE = [Feature("alcohol", 0, 200), Feature("malic_acid", 0, 200), Feature("proline", 0, 2000)]


def test_a_form_becomes_a_row_in_feature_order() -> None:
    assert inputs.parse_form({"f2": "1065", "f0": " 14.2", "f1": "1.7"}, WINE) == [
        14.2,
        1.7,
        1065.0,
    ]


@pytest.mark.parametrize(
    ("form", "field", "message"),
    [
        ({"f0": "1", "f1": "2"}, "proline", "enter a number"),
        ({"f0": "1", "f1": "abc", "f2": "3"}, "malic_acid", "'abc' is not a number"),
        ({"f0": "inf", "f1": "2", "f2": "3"}, "alcohol", "not a finite number"),
    ],
)
def test_a_bad_form_names_the_feature(form: dict[str, str], field: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        inputs.parse_form(form, WINE)
    assert caught.value.field == field


def test_a_csv_with_a_header_in_any_order_keeps_its_other_columns() -> None:
    data = b"id,proline,alcohol,malic_acid\nA,1065,14.2,1.7\nB,520,13.2,1.78\n"
    table = inputs.read_csv(data, WINE, max_rows=10)
    assert table.inputs == [[14.2, 1.7, 1065.0], [13.2, 1.78, 520.0]]
    assert table.header == ["id", "proline", "alcohol", "malic_acid"]
    answers = [
        Prediction("r-0", 0, {0: 0.9, 1: 0.1}, "wine/1"),
        Prediction("r-1", 1, {0: 0.2, 1: 0.8}, "wine/1"),
    ]
    out = inputs.write_csv(table, answers, [0, 1]).decode().splitlines()
    assert out == [
        "id,proline,alcohol,malic_acid,prediction,p_0,p_1,prediction_id",
        "A,1065,14.2,1.7,0,0.900000,0.100000,r-0",
        "B,520,13.2,1.78,1,0.200000,0.800000,r-1",
    ]


def test_a_csv_without_a_header_is_read_by_position() -> None:
    table = inputs.read_csv(
        b"\xef\xbb\xbf14.2,1.7,1065\r\n\r\n13.2,1.78,520\r\n", WINE, max_rows=10
    )
    assert table.header == ["alcohol", "malic_acid", "proline"]
    assert table.inputs == [[14.2, 1.7, 1065.0], [13.2, 1.78, 520.0]]


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        (b"", "file", "empty"),
        (b"\xff\xfe1,2", "file", "not UTF-8"),
        (b"alcohol,proline\n1,2\n", "file", "lacks 1 features: malic_acid"),
        (b"1,2\n", "file", "no header and 2 columns; expected a header"),
        (b"alcohol,malic_acid,proline\n", "file", "header but no rows"),
        (
            b"alcohol,malic_acid,proline\n1,2,3\n1,x,3\n",
            "line 3, malic_acid",
            "'x' is not a number",
        ),
        (b"alcohol,malic_acid,proline\n1,2\n", "line 2", "2 cells; the header has 3"),
        (b"1,2,3\n" * 11, "file", "11 rows; at most 10"),
    ],
)
def test_a_bad_csv_is_refused_with_where_and_what(data: bytes, field: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        inputs.read_csv(data, WINE, max_rows=10)
    assert caught.value.field == field
