#!/usr/bin/env bash
# The opsledger story on the embedded default (SQLite under demo-out/home):
# actors, a realistic delivery history, the log, a proof, verification, an offline
# bundle, and a tampered copy whose exact failure verify names.
set -euo pipefail
cd "$(dirname "$0")/.."

OPS="${OPS:-.venv/bin/opsledger}"
OUT=demo-out
HOME_DIR="$OUT/home"
rm -rf "$OUT"
mkdir -p "$OUT"

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '\033[2m$ opsledger %s\033[0m\n' "$*"; "$OPS" --home "$HOME_DIR" "$@"; }
quiet() { "$OPS" --home "$HOME_DIR" "$@"; }
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
now() { date -u +%Y-%m-%dT%H:%M:%SZ; }

bold "1. A new ledger: genesis holds the admin (self-signed trust anchor) and the node; the built-in contracts are deployed"
run init

bold "2. Actors, each with a role and a key file (mode 0600) that never leaves this machine"
run keys new alice --role developer
run keys new ci-runner --role ci --kind service
run keys new rm-bob --role release-manager
run keys new rm-carol --role release-manager
run keys new ops-dan --role operator
run keys list

bold "3. A delivery: push, build, test, scan, approvals, release request, deploy"
COMMIT=4f9c2e1a7b
ARTIFACT="shop:1.4.0"
DIGEST="sha256:$(printf '%s' "$ARTIFACT" | sha256sum | cut -d' ' -f1)"
run record code.pushed --subject repo:shop --as alice \
  --body "{\"repo\": \"shop\", \"ref\": \"refs/heads/main\", \"commits\": [{\"id\": \"$COMMIT\", \"author\": \"alice\", \"time\": \"$(now)\"}]}"
BUILD=$(quiet record build.finished --subject "artifact:$DIGEST" --as ci-runner --json \
  --field artifact=shop --field "digest=$DIGEST" --field "commit=$COMMIT" --field status=success | json_field tx_id)
echo "build.finished recorded as $BUILD"
run record test.finished --subject "artifact:$DIGEST" --as ci-runner \
  --field "digest=$DIGEST" --field suite=unit --field passed=412 --field failed=0 --field status=success
run record scan.finished --subject "artifact:$DIGEST" --as ci-runner \
  --field "digest=$DIGEST" --field scanner=pip-audit \
  --field findings.critical=0 --field findings.high=0 --field findings.medium=1 --field findings.low=3
run record release.requested --subject "artifact:$DIGEST" --as alice \
  --body "{\"service\": \"shop\", \"version\": \"1.4.0\", \"digest\": \"$DIGEST\", \"commits\": [\"$COMMIT\"]}"
run record approval.granted --subject "artifact:$DIGEST" --as rm-bob --field "digest=$DIGEST" --field release=shop-1.4.0
run record approval.granted --subject "artifact:$DIGEST" --as rm-carol --field "digest=$DIGEST" --field release=shop-1.4.0
run record deploy.finished --subject "artifact:$DIGEST" --as ci-runner \
  --body "{\"service\": \"shop\", \"environment\": \"prod\", \"version\": \"1.4.0\", \"digest\": \"$DIGEST\", \"strategy\": \"blue-green\", \"status\": \"success\", \"commits\": [\"$COMMIT\"]}"
run record note --subject change:CHG-42 --as ops-dan --field "text=Maintenance window 02:00-03:00 UTC approved by CAB"

bold "4. The release gate decided at every step; its latest verdict passes (every node re-executes it)"
run contract verdicts --subject "artifact:$DIGEST" --limit 3

bold "5. The rules hold: a developer may not claim a build (one line, exit 2, nothing written)"
set +e
run record build.finished --subject "artifact:$DIGEST" --as alice \
  --field artifact=shop --field "digest=$DIGEST" --field "commit=$COMMIT" --field status=success
echo "(exit status $?)"
set -e

bold "6. The log, and everything about one artifact"
run log
run log --subject "artifact:$DIGEST" --type 'approval.*'

bold "7. Prove the build is in the log, against the signed checkpoint"
run proof "$BUILD" --json
run checkpoint

bold "8. Verify everything: signatures, identity rules, nonces, links, roots, checkpoints, and every verdict re-executed"
run verify

bold "9. Export a bundle and verify it offline, with nothing but the file and the ledger id"
GENESIS=$(quiet head --json | json_field genesis_hash)
run export "$OUT/audit.jsonl.gz"
printf '\033[2m$ opsledger verify --bundle %s --genesis %s\033[0m\n' "$OUT/audit.jsonl.gz" "$GENESIS"
"$OPS" verify --bundle "$OUT/audit.jsonl.gz" --genesis "$GENESIS"

bold "10. Tamper with a copy: change the build's status in the stored bytes"
cp -r "$HOME_DIR" "$OUT/tampered"
python3 - "$OUT/tampered/ledger.db" "$BUILD" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
(leaf,) = db.execute("SELECT leaf FROM txs WHERE tx_id = ?", (sys.argv[2],)).fetchone()
forged = bytes(leaf).replace(b'"status":"success"', b'"status":"failure"')
db.execute("UPDATE txs SET leaf = ? WHERE tx_id = ?", (forged, sys.argv[2]))
db.commit()
print("rewrote build.finished status success -> failure in the copy")
PY
set +e
printf '\033[2m$ opsledger --home %s verify\033[0m\n' "$OUT/tampered"
"$OPS" --home "$OUT/tampered" verify
STATUS=$?
set -e
echo "(exit status $STATUS: the copy is rejected, naming the block and transaction)"
[ "$STATUS" -eq 1 ]

bold "Done. The ledger is in $HOME_DIR; serve it with: $OPS --home $HOME_DIR serve"
