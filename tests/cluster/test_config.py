"""Cluster mode's settings: both engines or neither, each field checked by name, and the
flags and environment that set them."""

from __future__ import annotations

import pytest

from fenliu.server import options
from fenliu.server.config import Config


def test_without_cluster_settings_nothing_changes() -> None:
    assert not Config().cluster
    assert not options.load([], {}).cluster


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cluster_nats": "nats://127.0.0.1:4222"}, "cluster_etcd must be set too"),
        ({"cluster_etcd": "127.0.0.1:2379"}, "cluster_nats must be set too"),
        ({"cluster_nats": "127.0.0.1:4222", "cluster_etcd": "127.0.0.1:2379"},
         "cluster_nats must be nats:// URLs"),
        ({"cluster_nats": "nats://h:1", "cluster_etcd": "h"}, "cluster_etcd must be host:port"),
        ({"cluster_name": "my-cluster"}, "cluster_name must be letters"),
        ({"lease_ttl_s": 1}, "lease_ttl_s must be an integer in 2..60"),
        ({"replicas": 0}, "replicas must be an integer in 1..5"),
    ],
)  # fmt: skip
def test_a_bad_cluster_setting_names_its_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Config(**fields)  # type: ignore[arg-type]


def test_flags_and_environment_select_cluster_mode() -> None:
    config = options.load(
        ["--cluster-nats", "nats://127.0.0.1:4222,nats://127.0.0.1:4223", "--node-id", "n1",
         "--lease-ttl", "4"],
        {"FENLIU_CLUSTER_ETCD": "127.0.0.1:2379"},
    )  # fmt: skip
    assert config.cluster
    assert (config.node_id, config.lease_ttl_s, config.cluster_etcd) == ("n1", 4, "127.0.0.1:2379")
