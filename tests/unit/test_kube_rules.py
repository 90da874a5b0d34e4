"""The API server's rules for names, labels, env entries and quantities, as the spec checks them."""

from __future__ import annotations

import pytest

from finetune_operator import kube_rules


@pytest.mark.parametrize("value", ["2", "500m", "1.5", ".5", "8Gi", "16G", "1e3", "100Mi", "+1", "0"])
def test_quantities_the_api_server_takes(value: str) -> None:
    assert kube_rules.quantity(value) == value


@pytest.mark.parametrize("value", ["...", "1.2.3", "8GB", "Gi", "", "1 Gi", "1ki", "-"])
def test_quantities_it_refuses(value: str) -> None:
    with pytest.raises(ValueError, match=r"expected a quantity such as 2, 500m, 1.5 or 8Gi, got"):
        kube_rules.quantity(value)


def test_labels() -> None:
    ok = {"app.kubernetes.io/name": "trainer", "team": "", "a_b.c-d": "X.y_z-1", "x" * 63: "v" * 63}
    assert kube_rules.labels(ok) == ok
    for bad in ({"-team": "x"}, {"Example.COM/x": "y"}, {"x" * 64: "v"}, {"a/b/c": "v"}, {"k": "v" * 64}, {"k": "v!"}):
        with pytest.raises(ValueError, match="expected"):
            kube_rules.labels(bad)


def test_names_and_env() -> None:
    assert kube_rules.dns_subdomain("registry-creds.v2") == "registry-creds.v2"
    for bad in ("", "Upper", "under_score", "a" * 254, "-lead"):
        with pytest.raises(ValueError, match="RFC 1123"):
            kube_rules.dns_subdomain(bad)
    good = [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}, {"name": "A.B-c"}]
    assert kube_rules.env(good) == good
    for bad, why in (([{"value": "x"}], "name"), ([{"name": "A=B"}], "name"), ([{"name": "A", "value": "1",
                     "valueFrom": {}}], "not both"), ([{"name": "A", "vaule": "1"}], "only name")):  # fmt: skip
        with pytest.raises(ValueError, match=why):
            kube_rules.env(bad)
