"""The earth-science datasets shipped in the package: checksums, coordinates, splits."""

from __future__ import annotations

import pytest
import torch

import geodiffusion as gd
from geodiffusion.data import earth


@pytest.mark.parametrize("name", sorted(earth.EARTH_DATASETS))
def test_events_have_the_published_row_counts_and_valid_coordinates(name):
    table = earth.load_events(name)
    assert table.shape == (earth.EARTH_DATASETS[name][0], 2)
    assert (abs(table[:, 0]) <= 90).all() and (abs(table[:, 1]) <= 180).all()


def test_points_lie_on_the_sphere_and_round_trip_to_lat_lon():
    table = torch.from_numpy(earth.load_events("volcano"))
    x = earth.lat_lon_to_sphere(table[:, 0], table[:, 1])
    assert bool(gd.Sphere(dim=2).belongs(x, atol=1e-12).all())
    lat, lon = earth.sphere_to_lat_lon(x)
    away_from_poles = table[:, 0].abs() < 89.9
    torch.testing.assert_close(lat, table[:, 0], rtol=0, atol=1e-9)
    torch.testing.assert_close(lon[away_from_poles], table[away_from_poles, 1], rtol=0, atol=1e-9)
    # north pole is +z, Greenwich meridian on the equator is +x
    pole = earth.lat_lon_to_sphere(torch.tensor([90.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(pole, torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64), atol=1e-15, rtol=0)


def test_split_is_a_seeded_80_10_10_partition():
    train, val, test = earth.load_earth("volcano", seed=3)
    assert (len(train), len(val), len(test)) == (662, 83, 82)
    again = earth.load_earth("volcano", seed=3)
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), again, strict=True))
    other = earth.load_earth("volcano", seed=4)[0]
    assert not torch.equal(train, other)
    idx = torch.cat(earth.random_split(827, seed=3))
    assert torch.equal(idx.sort().values, torch.arange(827))
    assert earth.load_earth("flood", 0, dtype=torch.float32)[0].dtype == torch.float32


def test_bad_names_fractions_and_corrupted_files_raise():
    with pytest.raises(ValueError, match="name: expected one of"):
        earth.load_events("tsunami")
    with pytest.raises(ValueError, match="fractions"):
        earth.random_split(10, 0, (0.5, 0.5, 0.5))


def test_checksum_mismatch_is_reported(monkeypatch):
    monkeypatch.setitem(earth.EARTH_DATASETS, "volcano", (827, "0" * 64))
    with pytest.raises(RuntimeError, match="checksum mismatch"):
        earth.load_events("volcano")
