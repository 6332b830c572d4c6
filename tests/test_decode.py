"""The MixUp / InstaHide decode (adversary.decode): known keys (exact), identifiability, noise, no keys.

Encodings come from the real encoders (clients.defenses) on real sample images, over T epochs
of a 20-image client (batches of 10, every step observed), as the ground-truth sidecar records them.

Calibration (CIFAR-10 sample, 20 private images, seed 0; see the report of the decode):
- known keys, exact encodings, T in {1, 2, 5, 20}: max abs error 1e-5 (T=1) .. 6e-8 (T=20);
  with N(0, 0.01^2) noise: min PSNR 38 dB (T=5), 47 dB (T=20); T=2 InstaHide: 16 dB worst image
  (noise gain 16: flagged by ``max_noise_gain``).
- no keys, exact MixUp/Intra-InstaHide encodings, k in {2, 4}, T in {5, 20}: cone-facet
  clustering purity 1.0 (chance 0.20-0.39), matched LPIPS 0.0000 (PSNR > 140 dB). Floor, the raw
  encodings |x~| as reconstructions: T=5, best containing encoding per original: LPIPS
  0.038 (MixUp k=2), 0.041 (k=4), 0.042 (InstaHide k=4); T=20, one-to-one (Hungarian) over all
  400 encodings: 0.026-0.029. Similarity-graph baseline (T=5): purity 0.83-0.92, LPIPS 0.004-0.022,
  PSNR 23-26 dB; similarity AUC 1.0 (k=2), 0.87-0.89 (k=4).
- no keys, N(0, 0.01^2) noise, MixUp k=4: purity 0.995, PSNR ~36-39 dB (T=5, 20); noise 0.03:
  purity ~0.82 (auto slack).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adversary.decode import (
    cluster_jaccard,
    cluster_purity,
    collect_encodings,
    decode_with_keys,
    decode_without_keys,
    membership,
    similarity_auc,
    similarity_graph,
)
from adversary.metrics import evaluate_reconstruction, lpips_distance, psnr
from clients.defenses import EncodeContext, generator_for
from clients.defenses.instahide import InstaHide, InstaHideParams
from clients.defenses.mixup import MixUp, MixUpParams
from fl_sim.data import load_sample_images

OFFSET = 5  # private dataset indices 5..24 (not 0..P-1): exercises the index mapping


@pytest.fixture(scope="module")
def data():
    cifar, y = load_sample_images("cifar10-sample")
    public, py = load_sample_images("cifar100-sample")
    # A "dataset" of 30 images whose client partition is indices 5..24 (the 20 CIFAR-10 samples).
    x = torch.cat([public[:OFFSET], cifar, public[OFFSET : OFFSET + 5]])
    labels = torch.cat([py[:OFFSET] % 10, y, py[OFFSET : OFFSET + 5] % 10])
    return x, labels, np.arange(OFFSET, OFFSET + 20), public


def _encoder(name: str, k: int, public=None):
    if name == "mixup":
        return MixUp(MixUpParams(k=k))
    # Uncentred InstaHide: |x~| is exactly the mix, the case the known-keys decode solves exactly.
    enc = InstaHide(InstaHideParams(k=k, center=False))
    if name == "inter":  # the real encoder's inter path, with the public set given directly
        enc.variant, enc.public_x = "inter", public
    return enc


def _epochs(enc, x, y, pool, epochs: int, batch: int = 10, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Sidecar-like step dicts for ``epochs`` passes over the partition."""
    order_rng = np.random.default_rng(seed)
    steps = []
    for t in range(epochs):
        order = order_rng.permutation(pool)
        gen = generator_for(seed, t + 1, 0, 0)
        for b in range(0, len(order), batch):
            idx = order[b : b + batch]
            ctx = EncodeContext(indices=idx, pool=pool, train_x=x, train_y=y, num_classes=10)
            enc_x, enc_y, keys = enc.encode(x[idx], torch.nn.functional.one_hot(y[idx], 10).float(), gen, ctx)
            steps.append({
                **keys, "encoded": enc_x.numpy(), "encoded_labels": enc_y.numpy(),
                "images": x[idx].numpy(), "labels": y[idx].numpy(), "indices": np.asarray(idx, np.int64),
            })
    return steps


# --- known keys ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mixup", "intra"])
@pytest.mark.parametrize("epochs", [5, 20])
def test_known_keys_recover_exactly(data, name: str, epochs: int) -> None:
    x, y, pool, _ = data
    es = collect_encodings(_epochs(_encoder(name, 4), x, y, pool, epochs))
    assert es.encodings.shape == (20 * epochs, 3, 32, 32) and es.signed == (name == "intra")
    assert np.array_equal(es.private_index, pool) and es.truth_known.all()
    if name == "intra":  # the signs really are there: raw encodings are not the mixes
        assert (es.encodings < 0).float().mean() > 0.3
    out = decode_with_keys(**es.decode_args())
    assert out.images.shape == (20, 3, 32, 32) and out.identifiable.all()
    assert float((out.images - es.truth).abs().max()) < 1e-4
    assert (out.diagnostics["counts"] >= epochs).all()  # own image once per epoch, plus partners
    assert np.isfinite(out.diagnostics["noise_gain"]).all()


def test_known_keys_inter_instahide_subtracts_known_public_partners(data) -> None:
    x, y, pool, public = data
    steps = _epochs(_encoder("inter", 4, public), x, y, pool, 5)
    es = collect_encodings(steps, public_partners=True)
    assert es.public_mask[:, 1:].all() and not es.public_mask[:, 0].any() and es.signed
    out = decode_with_keys(**es.decode_args(public_images=public))
    assert out.identifiable.all() and float((out.images - es.truth).abs().max()) < 1e-4
    # Same thing through the plain arguments (public_images alone implies columns 1.. public).
    direct = decode_with_keys(es.encodings, es.partners, es.coeffs, 20, public_images=public, signed=True)
    assert float((direct.images - es.truth).abs().max()) < 1e-4
    # Without subtracting the public images the decode is wrong: the subtraction matters.
    naive = decode_with_keys(es.encodings, es.partners[:, :1], es.coeffs[:, :1], 20, signed=True)
    assert float((naive.images - es.truth).abs().max()) > 0.1


def test_too_few_encodings_are_reported_non_identifiable(data) -> None:
    x, y, pool, _ = data
    es = collect_encodings(_epochs(_encoder("mixup", 4), x, y, pool, 5))
    a, b = 3, 7  # compact ids
    mem = membership(es.partners, 20)
    keep = ~(mem[:, a] | mem[:, b])  # drop every encoding with a or b ...
    others = [c for c in range(20) if c not in (a, b)][:2]
    partners = np.concatenate([es.partners[keep], [[a, b, *others]]])
    coeffs = np.concatenate([es.coeffs[keep], [[0.3, 0.3, 0.2, 0.2]]]).astype(np.float32)
    truth = es.truth
    extra = (torch.tensor([0.3, 0.3, 0.2, 0.2]).view(4, 1, 1, 1) * truth[[a, b, *others]]).sum(0, keepdim=True)
    enc = torch.cat([es.encodings[torch.from_numpy(keep)], extra])  # ... and add one mixing both
    out = decode_with_keys(enc, partners, coeffs, num_private=21)  # id 20: never observed
    expected = np.ones(21, bool)
    expected[[a, b, 20]] = False
    assert np.array_equal(out.identifiable, expected)
    assert out.diagnostics["counts"][a] == 1 and out.diagnostics["counts"][20] == 0
    ok = torch.from_numpy(expected[:20])
    assert float((out.images[:20][ok] - truth[ok]).abs().max()) < 1e-4  # the rest still exact
    assert float((out.images[[a, b]] - truth[[a, b]]).abs().max()) > 0.05  # (and a, b really unknown)
    assert float(out.images[20].abs().max()) == 0.0
    # Thresholds on top of the rank criterion.
    strict = decode_with_keys(enc, partners, coeffs, num_private=21, min_encodings=10)
    assert np.array_equal(strict.identifiable, expected & (out.diagnostics["counts"] >= 10))
    one = collect_encodings(_epochs(_encoder("mixup", 4), x, y, pool, 1))  # square system: exact but ill-conditioned
    loose = decode_with_keys(**one.decode_args())
    assert loose.identifiable.all() and loose.diagnostics["noise_gain"].max() > 20
    assert not decode_with_keys(**one.decode_args(), max_noise_gain=20).identifiable.all()


@pytest.mark.parametrize("name", ["mixup", "intra"])
@pytest.mark.parametrize("epochs", [5, 20])
def test_known_keys_degrade_gracefully_with_noise(data, name: str, epochs: int) -> None:
    x, y, pool, _ = data
    es = collect_encodings(_epochs(_encoder(name, 4), x, y, pool, epochs))
    noisy = es.encodings + 0.01 * torch.randn(es.encodings.shape, generator=torch.Generator().manual_seed(1))
    out = decode_with_keys(**{**es.decode_args(), "encodings": noisy})
    assert out.identifiable.all()
    assert float(psnr(out.images, es.truth).min()) >= 25.0


# --- collect_encodings -------------------------------------------------------------------------

def test_collect_encodings_from_private_batches_and_reconstructed_encodings(data) -> None:
    from fl_sim.ground_truth import PrivateBatch

    x, y, pool, _ = data
    steps = _epochs(_encoder("intra", 4), x, y, pool, 2)
    plain = {"images": steps[0]["images"], "labels": steps[0]["labels"], "indices": steps[0]["indices"]}
    batches = [PrivateBatch(f"i{r}", 1, 0, r, [plain, *steps[2 * r : 2 * r + 2]], {}) for r in range(2)]
    es = collect_encodings(batches)  # the key-less step is skipped
    assert len(es.encodings) == 40 and es.origin[:, 0].tolist() == [1] * 10 + [2] * 10 + [4] * 10 + [5] * 10
    recon = [torch.from_numpy(s["encoded"]) * 0 + 0.5 for s in steps]  # e.g. gradient-inversion outputs
    assert torch.equal(collect_encodings(steps, encodings=recon).encodings, torch.full((40, 3, 32, 32), 0.5))
    with pytest.raises(ValueError, match="encoding steps"):
        collect_encodings(steps, encodings=recon[:1])
    with pytest.raises(ValueError, match="no step with encoding keys"):
        collect_encodings([plain])


# --- no keys -----------------------------------------------------------------------------------

def _raw_floor(raw: torch.Tensor, truth: torch.Tensor, mem: np.ndarray) -> float:
    """Mean over originals of the LPIPS of the best raw encoding (|x~|) that contains it, each
    original picking freely (evaluator-side oracle; cheap: ~k*T candidates per original)."""
    rows, cols = np.nonzero(mem)
    d = lpips_distance(raw[torch.from_numpy(rows)], truth[torch.from_numpy(cols)]).numpy()
    return float(np.mean([d[cols == i].min() for i in range(truth.shape[0])]))


@pytest.mark.parametrize(("name", "k"), [("mixup", 2), ("mixup", 4), ("intra", 4)])
def test_no_keys_clusters_and_recovers_beyond_the_raw_encoding_floor(data, name: str, k: int) -> None:
    x, y, pool, _ = data
    es = collect_encodings(_epochs(_encoder(name, k), x, y, pool, 5))
    mem = membership(es.partners, es.num_private)
    out = decode_without_keys(es.encodings, 20, k, signed=es.signed)
    assert out.diagnostics["rank_estimate"] == 20 and out.images.shape[0] == 20 and out.identifiable.all()
    purity = cluster_purity(out.clusters, mem)
    assert purity["chance"] < 0.45 and purity["purity"] >= purity["chance"] + 0.4 and purity["purity"] > 0.95
    assert cluster_jaccard(out.clusters, mem)["jaccard"] > 0.9
    np.testing.assert_allclose(out.mixing.sum(1), 1.0, atol=1e-3)
    recovered = evaluate_reconstruction(out.images, es.truth)
    floor = _raw_floor(es.encodings.abs(), es.truth, mem)
    assert recovered["lpips_avg"] < 0.5 * floor and recovered["psnr_avg"] > 35


def test_no_keys_similarity_graph_and_baseline_are_above_chance(data) -> None:
    x, y, pool, _ = data
    es = collect_encodings(_epochs(_encoder("mixup", 2), x, y, pool, 5))
    mem = membership(es.partners, 20)
    assert similarity_auc(similarity_graph(es.encodings), mem) > 0.8
    out = decode_without_keys(es.encodings, 20, 2, method="similarity", refine_iters=3)
    purity = cluster_purity(out.clusters, mem)
    assert purity["purity"] > purity["chance"] + 0.3


def test_no_keys_tolerates_small_noise(data) -> None:
    x, y, pool, _ = data
    es = collect_encodings(_epochs(_encoder("mixup", 4), x, y, pool, 5))
    noisy = es.encodings + 0.01 * torch.randn(es.encodings.shape, generator=torch.Generator().manual_seed(1))
    out = decode_without_keys(noisy, 20, 4, refine_iters=5)
    assert abs(out.diagnostics["noise_std_estimate"] - 0.01) < 0.002
    mem = membership(es.partners, 20)
    assert cluster_purity(out.clusters, mem)["purity"] > 0.85
    match = cluster_jaccard(out.clusters, mem)["assignment"]
    got = psnr(out.images[list(match.values())], es.truth[list(match.keys())])
    assert float(got.median()) > 25


def test_true_clusters_score_perfectly() -> None:
    partners = np.array([[0, 1], [1, 2], [2, 0], [0, 3]])
    mem = membership(partners, 4)
    clusters = [np.flatnonzero(mem[:, i]) for i in range(4)]
    assert cluster_purity(clusters, mem)["purity"] == 1.0
    assert cluster_jaccard(clusters, mem)["jaccard"] == 1.0
    share = (mem.astype(int) @ mem.T.astype(int) > 0).astype(float)
    assert similarity_auc(share + 0.01 * np.eye(4), mem) == 1.0


def test_centred_instahide_signs_defeat_the_exact_decode(data) -> None:
    """InstaHide as its code does it (pixels centred before mixing): |x~| no longer determines the mix."""
    x, y, pool, _ = data
    enc = InstaHide(InstaHideParams(k=4, center="half"))
    es = collect_encodings(_epochs(enc, x, y, pool, 5))
    out = decode_with_keys(**es.decode_args())
    assert float((out.images - es.truth).abs().max()) > 0.2
