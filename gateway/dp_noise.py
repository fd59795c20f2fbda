"""Gaussian noise for DP-SGD from a `federation.privacy_rng.PrivacyRNG`: the OS CSPRNG in production, a seed only in
the named simulation mode.

torch's own normal sampler is a seeded Mersenne Twister/Philox: whoever learns the seed (it was derived from a public
round id) regenerates the noise and subtracts it from the released update. Opacus' answer, `secure_mode=True`, needs
`torchcsprng`, whose last release (0.2.1, March 2021) was built for torch 1.8 and is not installable beside torch
2.13 (measured here: `import torchcsprng` fails, and `PrivacyEngine(secure_mode=True)` raises). So the noise comes
from `PrivacyRNG.standard_normal` (Box-Muller over os.urandom words) and keeps the other half of Opacus' secure
mode: each coordinate is the sum of 2n = 4 independent N(0, std^2) draws divided by 2, again N(0, std^2), which
defeats the floating-point attacks on a single Gaussian draw (Holohan and Braghin 2021, "Secure Random Sampling in
Differential Privacy", ESORICS, Sec. 5.1, n = 2; Opacus `_generate_noise`). Cost: measured by
`python -m bench.dp_overhead` (it prints which RNG it used).
"""

from __future__ import annotations

import numpy as np

from federation.privacy_rng import PrivacyRNG

SUMMED_DRAWS = 4  # 2n with n = 2 (Holohan and Braghin 2021, Sec. 5.1), as Opacus' secure mode


def gaussian_noise(rng: PrivacyRNG, *, std: float, size: int) -> np.ndarray:
    """`size` independent N(0, std^2) draws (float64): the sum of SUMMED_DRAWS normals from `rng`, over 2."""
    if not std >= 0:
        raise ValueError(f"noise std must be >= 0, got {std}")
    if std == 0:
        return np.zeros(size)
    z = rng.standard_normal((SUMMED_DRAWS, size)).sum(axis=0) / np.sqrt(SUMMED_DRAWS)
    return std * z


def torch_noise(rng: PrivacyRNG, *, std: float, reference):  # noqa: ANN001, ANN201 (torch stays optional here)
    """Noise shaped, typed and placed like the torch tensor `reference`."""
    import torch

    flat = gaussian_noise(rng, std=std, size=int(reference.numel()))
    return torch.from_numpy(flat).to(dtype=reference.dtype, device=reference.device).view_as(reference)
