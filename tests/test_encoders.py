"""Metadata encoders: one-hot, cyclical dates, geohash, numbers, the table encoder, states."""

from __future__ import annotations

import json

import numpy as np
import pytest

from heads.estimators._encoders import (
    CategoricalEncoder,
    CyclicalDoyEncoder,
    CyclicalMonthEncoder,
    GeohashEncoder,
    MetadataEncoder,
    NumberEncoder,
    encoder_from_state,
    geohash_encode,
)

_BASE32 = "0123456789bcdefghjkmnpqrstuvwxyz"


def _geohash_reference(lat: float, lon: float, precision: int) -> str:
    """The textbook bisection, one bit at a time (slow, obviously correct)."""
    lat_lo, lat_hi, lon_lo, lon_hi = -90.0, 90.0, -180.0, 180.0
    bits, even, out = 0, True, ""
    for i in range(5 * precision):
        if even:
            mid = (lon_lo + lon_hi) / 2
            bit = lon >= mid
            lon_lo, lon_hi = (mid, lon_hi) if bit else (lon_lo, mid)
        else:
            mid = (lat_lo + lat_hi) / 2
            bit = lat >= mid
            lat_lo, lat_hi = (mid, lat_hi) if bit else (lat_lo, mid)
        bits = (bits << 1) | int(bit)
        even = not even
        if i % 5 == 4:
            out += _BASE32[bits]
            bits = 0
    return out


def _round_trip(enc):
    return encoder_from_state(json.loads(json.dumps(enc.get_state())))


# --------------------------------------------------------------------------- geohash


def test_geohash_known_strings():
    assert geohash_encode([57.64911], [10.40744], 11)[0] == "u4pruydqqvj"
    assert geohash_encode([42.605], [-5.603], 5)[0] == "ezs42"
    assert geohash_encode([-25.382708], [-49.265506], 8)[0] == "6gkzwgjz"
    out = geohash_encode([np.nan, 91.0, 10.0], [0.0, 0.0, 181.0], 4)
    assert out.tolist() == ["", "", ""]


def test_geohash_matches_bisection_reference():
    rng = np.random.default_rng(0)
    lat = rng.uniform(-90, 90, 200)
    lon = rng.uniform(-180, 180, 200)
    for p in (1, 3, 6, 9, 12):
        fast = geohash_encode(lat, lon, p)
        slow = [_geohash_reference(a, o, p) for a, o in zip(lat, lon, strict=True)]
        assert fast.tolist() == slow


def test_geohash_encoder_cells_unseen_and_invalid():
    train = np.array([[57.64911, 10.40744], [57.6, 10.4], [48.85, 2.35]])
    enc = GeohashEncoder(precisions=(2, 3, 4)).fit(train)
    assert enc.cells_[2] == ["u0", "u4"] and enc.cells_[4] == ["u09t", "u4pr"]
    out = enc.transform(
        np.array([[57.65, 10.41], [-33.9, 151.2], [np.nan, 1.0], [95.0, 1.0], [57.0, 9.0]])
    )
    assert out.shape == (5, enc.dim) and out.dtype == np.float32
    assert out[0].sum() == 3  # one cell per precision
    assert not out[1:4].any()  # Sydney unseen, NaN and |lat| > 90 invalid
    assert out[4].sum() == 1  # same 'u4' region, finer cells unseen
    np.testing.assert_array_equal(_round_trip(enc).transform(train), enc.transform(train))


# --------------------------------------------------------------------------- other kinds


def test_categorical_unseen_and_missing_are_zeros():
    enc = CategoricalEncoder().fit(np.array(["oak", "beech", "oak", None, "pine"], dtype=object))
    assert enc.categories_ == ["oak", "beech", "pine"]  # by frequency, ties in sorted order
    out = enc.transform(np.array(["pine", "maple", None, np.nan, ""], dtype=object))
    np.testing.assert_array_equal(out, [[0, 0, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(_round_trip(enc).transform(["oak"]), [[1, 0, 0]])


def test_categorical_caps_at_most_frequent():
    values = np.repeat(np.arange(10), np.arange(10, 0, -1))  # 0 most frequent
    enc = CategoricalEncoder(max_categories=3).fit(values)
    assert enc.categories_ == ["0", "1", "2"] and enc.dim == 3
    assert not enc.transform([9]).any()


def test_cyclical_month_december_next_to_january():
    enc = CyclicalMonthEncoder().fit(np.arange(1, 13))
    out = enc.transform([12, 1, 2, 6, np.nan, 13])  # (6, 3)
    dist = lambda a, b: np.linalg.norm(out[a, :2] - out[b, :2])  # noqa: E731
    assert dist(0, 1) == pytest.approx(dist(1, 2), abs=1e-6)  # Dec-Jan like Jan-Feb
    assert dist(0, 1) < 0.6 and dist(0, 3) > 1.9  # Dec-Jun opposite
    np.testing.assert_array_equal(out[4:], [[0, 0, 1], [0, 0, 1]])  # missing / invalid
    dates = np.array(["2021-12-15", "2022-01-03", None, "not a date"], dtype=object)
    np.testing.assert_allclose(enc.transform(dates), out[[0, 1, 4, 4]], atol=1e-6)
    np.testing.assert_array_equal(
        enc.transform(np.array(["2021-12-15", "NaT"], dtype="datetime64[D]")), out[[0, 4]]
    )


def test_cyclical_doy_new_year_is_close():
    dates = np.array(["2021-12-31", "2022-01-01", "2022-07-02"], dtype="datetime64[D]")
    out = CyclicalDoyEncoder().fit(dates).transform(dates)
    assert np.linalg.norm(out[0, :2] - out[1, :2]) < 0.03
    assert np.linalg.norm(out[0, :2] - out[2, :2]) > 1.9
    assert not out[:, 2].any()


def test_number_standardised_with_training_stats():
    enc = NumberEncoder().fit([1.0, 2.0, 3.0, np.nan])
    out = enc.transform([2.0, 3.0, np.nan, np.inf])
    np.testing.assert_allclose(out, [[0, 0], [1.224745, 0], [0, 1], [0, 1]], atol=1e-5)
    np.testing.assert_array_equal(_round_trip(enc).transform([5.0]), enc.transform([5.0]))


# --------------------------------------------------------------------------- the table encoder


def _table(n: int = 6) -> dict[str, np.ndarray]:
    return {
        "eventDate": np.array(
            ["2021-01-05", "2021-06-10", None, "2021-12-24", "2022-03-01", "2022-08-08"][:n],
            dtype=object,
        ),
        "Latitude": np.array([57.6, 48.8, np.nan, 55.7, 56.1, 57.0][:n]),
        "Longitude": np.array([10.4, 2.3, 0.0, 12.5, 10.2, 9.9][:n]),
        "Substrate": np.array(["soil", "wood", "soil", None, "leaf", "wood"][:n], dtype=object),
        "elevation": np.array([10.0, 200.0, np.nan, 30.0, 5.0, 60.0][:n]),
    }


def test_metadata_encoder_infers_kinds_from_names_and_dtypes():
    enc = MetadataEncoder(["eventDate", "Latitude", "Longitude", "Substrate", "elevation"])
    blocks = enc.fit(_table()).transform(_table())
    assert enc.field_names == [
        "eventDate:cyclical-month",
        "eventDate:cyclical-doy",
        "Latitude+Longitude",
        "Substrate",
        "elevation",
    ]
    assert [b.shape for b in blocks] == [(6, d) for d in enc.field_dims]
    assert all(b.dtype == np.float32 for b in blocks)
    assert enc.field_dims[3] == 3 and enc.field_dims[4] == 2
    np.testing.assert_array_equal(blocks[0][2], [0, 0, 1])  # missing date
    assert not blocks[2][2].any()  # NaN latitude


def test_metadata_encoder_explicit_columns_and_state_round_trip():
    columns = {
        "eventDate": "date",
        ("Latitude", "Longitude"): "geohash",
        "Substrate": "categorical",
    }
    enc = MetadataEncoder(columns, geohash_precisions=(3,)).fit(_table())
    new = {k: v[::-1] for k, v in _table().items()}
    new["Substrate"] = np.array(["bark", None, "soil", "soil", "wood", "leaf"], dtype=object)
    state = json.loads(json.dumps(enc.get_state()))
    loaded = MetadataEncoder.from_state(state)
    assert loaded.field_names == enc.field_names
    for a, b in zip(loaded.transform(new), enc.transform(new), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not enc.transform(new)[-1][0].any()  # unseen 'bark'
    # the rebuilt columns are valid settings for a fresh encoder
    assert MetadataEncoder(loaded.columns).fit(_table()).field_names == enc.field_names


def test_metadata_encoder_accepts_a_dataframe():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(_table())
    df["eventDate"] = pd.to_datetime(df["eventDate"])
    df["count"] = pd.array([1, 2, None, 4, 5, 6], dtype="Int64")
    enc = MetadataEncoder(list(df.columns)).fit(df)
    assert enc.field_names[:2] == ["eventDate:cyclical-month", "eventDate:cyclical-doy"]
    assert enc.field_names[-1] == "count"
    count = enc.transform(df)[-1]
    np.testing.assert_array_equal(count[2], [0, 1])  # pandas.NA is missing


def test_all_missing_column_is_an_error_naming_it():
    table = _table()
    table["notes"] = np.array([None] * 6, dtype=object)
    with pytest.raises(ValueError, match=r"column 'notes' has no usable value.*drop it"):
        MetadataEncoder(["Substrate", "notes"]).fit(table)


def test_missing_column_is_an_error_listing_columns():
    with pytest.raises(ValueError, match=r"column 'habitat' is not in the table; it has \["):
        MetadataEncoder(["habitat"]).fit(_table())
