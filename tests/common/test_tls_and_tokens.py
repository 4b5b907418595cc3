"""TLS, mutual TLS and the shared token, with real certificates made here by openssl: the right
credentials work, everything else is refused with a clear status, and a whole training job runs
with every connection encrypted and authenticated."""

import shutil
import subprocess

import grpc
import numpy as np
import pytest

from embps.api import TableSpec
from embps.client import PSClient, ShardError
from embps.common.job_config import JobConfig
from embps.common.health import wait_serving
from embps.common.local_cluster import LocalShard
from embps.common.security import Security
from embps.trainer.local_job import run_local_job

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make certificates")


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a node certificate (for localhost/127.0.0.1, usable by servers and clients alike, as one
    per host would be), a stranger's CA and a token."""
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={ca}",
                "-keyout", f"{ca}.key", "-out", f"{ca}.pem", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=node", "-keyout", "node.key", "-out", "node.csr",
            cwd=d)
    (d / "node.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                "extendedKeyUsage=serverAuth,clientAuth\n")
    openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
            "-extfile", "node.ext", "-out", "node.pem", cwd=d)
    (d / "token").write_text("s3cret-token\n")
    (d / "wrong-token").write_text("guess\n")
    return d


def security(pki, **fields):
    return Security(**{k: str(pki / v) if isinstance(v, str) else v for k, v in fields.items()})


def other_client(config, wrong):
    return PSClient(config.__class__.from_addresses(config.shards, security=wrong, deadline_seconds=2))


def use(client):
    client.create_table("t", TableSpec(dim=4, capacity=100), if_not_exists=True)
    client.assign("t", [1, 2], np.ones((2, 4), np.float32))
    return client.lookup("t", [1, 2])


def refused(client) -> grpc.StatusCode:
    with pytest.raises(ShardError) as info:
        client.list_tables()
    return info.value.code


def test_tls_server(pki, tmp_path):
    with LocalShard(tmp_path, security=security(pki, tls_cert="node.pem", tls_key="node.key", tls_ca="ca.pem")) as shard:
        with PSClient(shard.cluster_config) as client:
            np.testing.assert_array_equal(use(client), np.ones((2, 4)))
            assert client.data_path_kinds() == ["grpc"]   # the plaintext TCP path is not offered
        for wrong in (Security(), security(pki, tls_ca="other-ca.pem")):
            with other_client(shard.cluster_config, wrong) as client:
                assert refused(client) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls(pki, tmp_path):
    mutual = security(pki, tls_cert="node.pem", tls_key="node.key", tls_ca="ca.pem", tls_client_auth=True)
    with LocalShard(tmp_path, security=mutual) as shard:
        with PSClient(shard.cluster_config) as client:
            np.testing.assert_array_equal(use(client), np.ones((2, 4)))
        with other_client(shard.cluster_config, security(pki, tls_ca="ca.pem")) as client:   # no certificate
            assert refused(client) == grpc.StatusCode.UNAVAILABLE


def test_shared_token(pki, tmp_path):
    with LocalShard(tmp_path, security=security(pki, auth_token_file="token")) as shard:
        with PSClient(shard.cluster_config) as client:
            np.testing.assert_array_equal(use(client), np.ones((2, 4)))
        for wrong in (Security(), security(pki, auth_token_file="wrong-token")):
            with other_client(shard.cluster_config, wrong) as client:
                assert refused(client) == grpc.StatusCode.UNAUTHENTICATED
        wait_serving(shard.address, 5)   # health checks need no token: probes keep working


def test_security_config_is_checked(pki):
    with pytest.raises(ValueError, match="tls_cert and tls_key go together"):
        Security.from_table({"tls_cert": "x.pem"}, {})
    with pytest.raises(ValueError, match="tls_client_auth needs tls_ca"):
        Security.from_table({"tls_client_auth": True}, {})
    with pytest.raises(ValueError, match=r"unknown \[security\] settings: \['tls_crt'\]"):
        Security.from_table({"tls_crt": "x"}, {})
    assert Security.from_table({}, {"EMBPS_SECURITY_AUTH_TOKEN_FILE": "/t"}).auth_token_file == "/t"


def test_training_job_with_mutual_tls_and_token(pki, tmp_path):
    """Shards, oracle, gateways, their peers and trainers all talk over mutual TLS with the token."""
    everything = security(pki, tls_cert="node.pem", tls_key="node.key", tls_ca="ca.pem", tls_client_auth=True,
                          auth_token_file="token")
    job = JobConfig(dataset="synthetic", dataset_options={"scale": 0.0005}, trainers=2, global_batch=64, steps=8,
                    eval_batches=1, dim=4, lookahead=4, timeout_seconds=60, security=everything)
    result = run_local_job(job, tmp_path, n_shards=1, show_progress=False)
    assert len(result.metrics["losses"]) == 8
    assert "auth_token_file" in (tmp_path / "job.toml").read_text()
