"""Zero-cost proxies: each value checked by hand on a two-layer net, and the supernet-level predictor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from edgenas.accuracy.proxies import (
    ProxyPredictor,
    grad_norm,
    jacov,
    naswot,
    score_model,
    snip,
    synflow,
)
from edgenas.errors import UsageError
from edgenas.space import SearchSpace

W1 = [[1.0, -2.0], [3.0, 0.0]]


def two_layer(w2: list[list[float]], relu: bool = False) -> nn.Module:
    """f(x) = W2 · act(W1 · x), no biases."""
    first = nn.Linear(2, 2, bias=False)
    second = nn.Linear(2, len(w2), bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.tensor(W1))
        second.weight.copy_(torch.tensor(w2))
    return nn.Sequential(first, nn.ReLU(), second) if relu else nn.Sequential(first, second)


def test_synflow_by_hand() -> None:
    # |W1| = [[1, 2], [3, 0]], |W2| = [[1, 1]]; R = 1ᵀ|W2||W1|1 = [1, 1]·[3, 3] = 6.
    # ∂R/∂|W1|ij = |W2|_i, so Σ|W1 ⊙ ∂R/∂W1| = Σ_ij |W2|_i |W1|ij = R, and likewise for W2: synflow = 2R = 12.
    net = two_layer([[1.0, -1.0]])
    assert synflow(net, (2,)) == pytest.approx(12.0)
    assert net[0].weight[0, 1].item() == -2.0  # the model itself is not linearised


def test_gradient_proxies_by_hand() -> None:
    # W2 = I: logits = h = W1·x = [-1, 3] for x = [1, 1]; label 0. p1 = softmax(h)_1 = e^4 / (1 + e^4).
    # ∂L/∂logits = [-p1, p1]; ∂L/∂W2 = g hᵀ = p1·[[1, -3], [-1, 3]]; ∂L/∂W1 = (W2ᵀ g) xᵀ = p1·[[-1, -1], [1, 1]].
    net = two_layer([[1.0, 0.0], [0.0, 1.0]])
    x, y = torch.tensor([[1.0, 1.0]]), torch.tensor([0])
    p1 = math.exp(4) / (1 + math.exp(4))
    assert grad_norm(net, x, y) == pytest.approx(p1 * 2.0 + p1 * math.sqrt(20.0), rel=1e-6)
    # snip: |W1 ⊙ ∂W1| = p1·(1 + 2 + 3 + 0) = 6 p1; |W2 ⊙ ∂W2| = p1·(1 + 3) = 4 p1.
    assert snip(net, x, y) == pytest.approx(10.0 * p1, rel=1e-6)
    assert net[0].weight.grad is None  # the proxies leave no gradients behind


def test_naswot_by_hand() -> None:
    # Pre-ReLU units for x1 = [1, 1]: W1·x1 = [-1, 3] → code [0, 1]; x2 = [1, -1]: [3, 3] → code [1, 1].
    # K = [[2, 1], [1, 2]] (the two images agree on one unit): log det K = log 3.
    net = two_layer([[1.0, 0.0], [0.0, 1.0]], relu=True)
    assert naswot(net, torch.tensor([[1.0, 1.0], [1.0, -1.0]])) == pytest.approx(math.log(3.0))


def test_jacov_by_hand() -> None:
    # With W2 = I and ReLU: J_i = 1ᵀ D_i W1 with D_i the active units. A third input dimension makes the
    # correlation informative: W1 = [[1, -2, 1], [3, 0, -1]].
    first = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, -2.0, 1.0], [3.0, 0.0, -1.0]]))
    net = nn.Sequential(first, nn.ReLU(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[2].weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0], [0.0, 1.0, 0.0]])
    # x1: pre [-1, 3] → unit 2 → J = [3, 0, -1]; x2: [3, 3] → both → J = [4, -2, 0]; x3: [-2, 0] → none → J = 0.
    jac = np.array([[3.0, 0.0, -1.0], [4.0, -2.0, 0.0], [0.0, 0.0, 0.0]])
    with np.errstate(invalid="ignore"):
        corr = np.nan_to_num(np.corrcoef(jac), nan=0.0)
    eig = np.abs(np.linalg.eigvalsh(corr))
    expected = -np.sum(np.log(eig + 1e-5) + 1 / (eig + 1e-5))
    assert jacov(net, x) == pytest.approx(expected, rel=1e-9)
    # Hand check of the correlation: J1 centred [7, -2, -5]/3, J2 centred [10, -8, -2]/3.
    c12 = (70 + 16 + 10) / math.sqrt((49 + 4 + 25) * (100 + 64 + 4))
    assert corr[0, 1] == pytest.approx(c12)


def test_score_model_rejects_unknown_proxy() -> None:
    with pytest.raises(UsageError, match="unknown torch proxy 'flops'.*synflow"):
        score_model(nn.Linear(2, 2), torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), ["flops"])


def test_proxies_on_a_supernet_are_deterministic_and_rank_sizes() -> None:
    from edgenas.accuracy.proxies import TORCH_PROXIES
    from edgenas.supernet import Supernet

    space = SearchSpace.preset("tiny", resolutions=(24,))
    torch.manual_seed(0)
    supernet = Supernet(space).eval()
    g = torch.Generator().manual_seed(0)
    batch = {24: (torch.randn(4, 3, 24, 24, generator=g), torch.arange(4))}
    archs = [space.smallest(), space.largest()]
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    values = {name: [] for name in TORCH_PROXIES}
    for arch in archs:
        net = supernet.extract(arch)
        first = score_model(net, *batch[24])
        assert score_model(net, *batch[24]) == first  # repeats exactly (no dropout, BN statistics kept)
        for name in TORCH_PROXIES:
            assert np.isfinite(first[name]), name
            values[name].append(first[name])
    for k, v in supernet.state_dict().items():  # scoring changed no weight or BN statistic
        assert torch.equal(v, before[k]), k
    assert values["synflow"][1] > values["synflow"][0]  # a product over layers of |weights| grows with the net
    proxy = ProxyPredictor("synflow", supernet=supernet, batches=batch.__getitem__)
    np.testing.assert_allclose(proxy.predict(archs), values["synflow"])
    assert proxy.evaluated == 2 and proxy.predict(archs[:1])[0] == values["synflow"][0] and proxy.evaluated == 2
    at_init = ProxyPredictor("synflow", supernet=supernet, batches=batch.__getitem__, at_init=True, seed=3)
    assert at_init.supernet is not supernet
    scored_at_init = at_init.predict(archs)
    assert np.all(np.isfinite(scored_at_init))
    assert not np.allclose(scored_at_init, values["synflow"])  # fresh initial weights, not the trained ones
    again = ProxyPredictor("synflow", supernet=supernet, batches=batch.__getitem__, at_init=True, seed=3)
    np.testing.assert_allclose(again.predict(archs), scored_at_init)  # the seed fixes the initialisation
    for k, v in supernet.state_dict().items():  # and the trained supernet is untouched
        assert torch.equal(v, before[k]), k
    for name in ("macs", "params"):
        v = ProxyPredictor(name, space=space).predict(archs)
        assert v[1] > v[0] > 0, name
    normalized = ProxyPredictor("params", space=space, reference=[space.sample(np.random.default_rng(i)) for i in range(20)])
    v = normalized.predict(archs + [space.sample(np.random.default_rng(99))])
    assert v[0] == 0.0 and v[1] == 1.0 and 0.0 <= v[2] <= 1.0


def test_proxy_predictor_errors_name_the_fix() -> None:
    space = SearchSpace.preset("tiny")
    with pytest.raises(UsageError, match="unknown proxy 'zen'"):
        ProxyPredictor("zen", space=space)
    with pytest.raises(UsageError, match="needs a supernet"):
        ProxyPredictor("synflow", space=space)


@pytest.mark.slow
def test_proxies_command_reports_taus_and_reuses_the_store(tmp_path, capsys) -> None:
    import json

    from edgenas.cli import main
    from tests.cli.test_accuracy import make_checkpoint

    ckpt = make_checkpoint(tmp_path)
    argv = ["proxies", "--supernet", str(ckpt), "--samples", "4", "--batch-size", "4", "--bn-batches", "1",
            "--proxies", "synflow,naswot,macs", "--store", str(tmp_path / "store.sqlite"), "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["samples"] == 4 and first["evaluated_now"] == 4 and set(first["tau"]) == {"synflow", "naswot", "macs"}
    assert all(-1.0 <= t <= 1.0 or math.isnan(t) for t in first["tau"].values())
    assert main(argv[:-1] + ["--proxies", "macs", "--json"]) == 0  # the accuracies come from the store now
    second = json.loads(capsys.readouterr().out)
    assert second["evaluated_now"] == 0 and second["tau"]["macs"] == first["tau"]["macs"]
    assert main(argv[:-1] + ["--proxies", "synflow,zen"]) == 2
    assert "unknown proxy 'zen'" in capsys.readouterr().err
