"""validate's eigenvector angles: the stable ‖y − (uᵀy)u‖ form resolves angles √(1 − c²) rounds to 0."""

import numpy as np
import pytest

from hpcspec.analyses.validation import sin_angles


@pytest.mark.parametrize("angle", [1e-12, 1e-9, 3e-5, 0.4])
def test_sin_angle_is_exact_for_a_known_rotation(angle):
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((50, 2)))
    u, w = basis[:, 0], basis[:, 1]
    for sign in (1.0, -1.0):  # an eigenvector's sign is arbitrary
        y = sign * (np.cos(angle) * u + np.sin(angle) * w)
        assert sin_angles(y[:, None], u[:, None])[0] == pytest.approx(np.sin(angle), rel=1e-6, abs=1e-15)
    # the naive form loses the small ones entirely
    if angle < 1e-8:
        c = float(np.abs(u @ (np.cos(angle) * u + np.sin(angle) * w)))
        assert np.sqrt(max(0.0, 1.0 - c * c)) < 0.5 * angle


def test_float32_vectors_get_a_nonzero_angle():
    # a float64 eigenvector rounded to float32 and back is off by ~1e-8: not 0
    rng = np.random.default_rng(1)
    u = rng.standard_normal(400)
    u /= np.linalg.norm(u)
    y = u.astype(np.float32).astype(np.float64)
    angle = sin_angles(y[:, None], u[:, None])[0]
    assert 1e-10 < angle < 1e-6
