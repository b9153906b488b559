"""The kubernetes target's command lines, checked with a fake ``kubectl`` on PATH (there is
no cluster here): it logs its arguments and fails ``rollout status`` when told to."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.pipeline.deploy.helpers import Ledger, bodies, deploy

DIGEST = "sha256:" + "cd" * 32

FAKE = """#!/bin/sh
echo "$@" >> "$KUBECTL_LOG"
case "$*" in
  *"rollout status"*)
    if [ -f "$KUBECTL_FAIL" ]; then
      rm -f "$KUBECTL_FAIL"
      echo 'error: deployment "shop" exceeded its progress deadline' >&2
      exit 1
    fi
    echo 'deployment "shop" successfully rolled out' ;;
esac
"""


@pytest.fixture
def kubectl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "kubectl"
    fake.write_text(FAKE)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "kubectl.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KUBECTL_LOG", str(log))
    monkeypatch.setenv("KUBECTL_FAIL", str(tmp_path / "fail"))
    return log


RAW = {
    "service": "shop",
    "environment": "production",
    "strategy": "rolling",
    "target": {
        "kind": "kubernetes",
        "manifest": "k8s/shop.yaml",
        "deployment": "shop",
        "namespace": "shop",
        "context": "prod-eu",
        "image": "registry.example/shop:{version}",
        "timeout": "120s",
    },
}
BASE = "--context prod-eu --namespace shop"


def test_apply_set_image_and_rollout(
    ledger: Ledger, state_dir: Path, tmp_path: Path, kubectl: Path
) -> None:
    out = deploy(ledger, RAW, tmp_path, version="1.4.0", digest=DIGEST, state_dir=state_dir)
    assert out.status == "success", out.reason
    assert kubectl.read_text().splitlines() == [
        f"{BASE} apply -f k8s/shop.yaml",
        f"{BASE} set image deployment/shop shop=registry.example/shop:1.4.0",
        f"{BASE} rollout status deployment/shop --timeout=120s",
    ]


def test_failed_rollout_is_undone(
    ledger: Ledger, state_dir: Path, tmp_path: Path, kubectl: Path
) -> None:
    (tmp_path / "fail").touch()
    out = deploy(ledger, RAW, tmp_path, version="1.5.0", digest=DIGEST, state_dir=state_dir)
    assert out.status == "rolled_back"
    assert "exceeded its progress deadline" in out.reason
    assert kubectl.read_text().splitlines()[-2:] == [
        f"{BASE} rollout undo deployment/shop",
        f"{BASE} rollout status deployment/shop --timeout=120s",
    ]
    rolled = bodies(ledger, "deploy.rolled_back")
    assert rolled[0]["reason"] == out.reason and rolled[0]["target"] == "kubernetes"
