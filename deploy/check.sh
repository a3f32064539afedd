#!/usr/bin/env bash
# Offline checks of the deployment files, run by tests/deploy_check.rs and by hand:
#   deploy/check.sh [REPOSITORY_ROOT]
# - docker-compose parses deploy/docker-compose.yml and resolves its variables;
# - kubectl kustomize renders deploy/k8s, and kubernetes-validate checks every rendered object
#   against the bundled Kubernetes OpenAPI schemas, rejecting unknown fields (--strict);
# - the values that must agree across files do: grace periods against the worker's
#   --shutdown-timeout, one GPU per worker, JetStream on file storage, non-root images.
# No network is used. Exit status: 0 when every check passed, 1 when one failed, 77 when a tool
# is missing (1 instead when CAPFILT_REQUIRE_DEPLOY_TOOLS=1, as in CI).
set -euo pipefail

root="$(cd "${1:-$(dirname "$0")/..}" && pwd)"
deploy="$root/deploy"
kubernetes_version="${CAPFILT_KUBERNETES_VERSION:-1.30.0}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

missing=()
for tool in docker-compose kubectl kubernetes-validate python3; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "deploy check skipped: not installed: ${missing[*]} (.ci/run installs them)" >&2
    if [[ "${CAPFILT_REQUIRE_DEPLOY_TOOLS:-}" == 1 ]]; then
        exit 1
    fi
    exit 77
fi

echo "== docker-compose config"
docker-compose -f "$deploy/docker-compose.yml" config >"$work/compose.yml"

echo "== kubectl kustomize (configs/ lies outside deploy/k8s, hence the load restrictor)"
kubectl kustomize --load-restrictor LoadRestrictionsNone "$deploy/k8s" >"$work/k8s.yml"

echo "== kubernetes-validate --strict, Kubernetes $kubernetes_version"
kubernetes-validate --strict --quiet --kubernetes-version "$kubernetes_version" "$work/k8s.yml"

echo "== values that must agree across files"
python3 - "$work/compose.yml" "$work/k8s.yml" "$deploy" <<'PYTHON'
import pathlib
import re
import sys

import yaml

compose_path, k8s_path, deploy = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
failures = []

# Time the platform waits after SIGTERM beyond the worker's own --shutdown-timeout, for
# closing the Parquet writer and publishing the shard.
MIN_MARGIN_SECONDS = 15


def check(condition, message):
    if not condition:
        failures.append(message)


def seconds(text):
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", str(text).strip())
    if not match:
        raise SystemExit(f"cannot read a duration from {text!r}")
    value, unit = int(match.group(1)), match.group(2) or "s"
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def shutdown_timeout(args):
    """Returns the --shutdown-timeout of a worker's arguments, or the documented 120 s default."""
    args = [str(a) for a in args]
    for i, arg in enumerate(args):
        if arg == "--shutdown-timeout":
            return seconds(args[i + 1])
        if arg.startswith("--shutdown-timeout="):
            return seconds(arg.split("=", 1)[1])
    return 120


compose = yaml.safe_load(open(compose_path))
services = compose["services"]
workers = {name: s for name, s in services.items() if s.get("command", [None])[0] == "worker"}
check(len(workers) == 2, f"docker-compose.yml should start two workers, found {sorted(workers)}")
check("coordinator" in services, "docker-compose.yml has no coordinator service")
check("--jetstream" in services.get("nats", {}).get("command", []), "docker-compose.yml starts NATS without --jetstream")
for name, service in workers.items():
    grace = seconds(service.get("stop_grace_period", "10s"))
    timeout = shutdown_timeout(service["command"])
    check(grace >= timeout + MIN_MARGIN_SECONDS,
          f"compose service {name}: stop_grace_period {grace:.0f}s leaves less than {MIN_MARGIN_SECONDS}s beyond --shutdown-timeout {timeout:.0f}s")

objects = [o for o in yaml.safe_load_all(open(k8s_path)) if o]
by_kind = {}
for o in objects:
    by_kind.setdefault(o["kind"], []).append(o)
for kind in ("Deployment", "Job", "CronJob", "ConfigMap"):
    check(kind in by_kind, f"the Kubernetes manifests have no {kind}")

for deployment in by_kind.get("Deployment", []):
    pod = deployment["spec"]["template"]["spec"]
    for container in pod["containers"]:
        args = container.get("args", [])
        if not args or args[0] != "worker":
            continue
        gpus = container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        check(str(gpus) == "1", f"worker container {container['name']} should request one nvidia.com/gpu, has {gpus}")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        timeout = shutdown_timeout(args)
        check(grace >= timeout + MIN_MARGIN_SECONDS,
              f"worker Deployment: terminationGracePeriodSeconds {grace} leaves less than {MIN_MARGIN_SECONDS}s beyond --shutdown-timeout {timeout:.0f}s")

config_maps = by_kind.get("ConfigMap", [])
presets = sorted(p.name for p in (deploy.parent / "configs").glob("*.toml"))
for config_map in config_maps:
    check(sorted(config_map.get("data", {})) == presets,
          f"ConfigMap {config_map['metadata']['name']} holds {sorted(config_map.get('data', {}))}, configs/ holds {presets}")

values = yaml.safe_load(open(deploy / "k8s" / "nats-values.yaml"))
jetstream = values.get("config", {}).get("jetstream", {})
check(jetstream.get("enabled") is True, "nats-values.yaml does not enable JetStream")
check(jetstream.get("fileStore", {}).get("enabled") is True, "nats-values.yaml does not put JetStream on file storage")
check(jetstream.get("fileStore", {}).get("pvc", {}).get("enabled") is True, "nats-values.yaml keeps JetStream files off a persistent volume")

for dockerfile in ("Dockerfile", "Dockerfile.cuda"):
    text = (deploy / dockerfile).read_text()
    final_stage = text.rsplit("\nFROM ", 1)[-1]
    check(re.search(r"^USER (?!root|0\b)", final_stage, re.M) is not None, f"{dockerfile}: the runtime stage runs as root")
    check('ENTRYPOINT ["/usr/bin/tini", "--", "capfilt"]' in final_stage, f"{dockerfile}: the entrypoint is not capfilt under tini")
    check("VOLUME" in final_stage and "HF_HOME" in final_stage, f"{dockerfile}: no Hugging Face cache volume")
check("--features cuda" in (deploy / "Dockerfile.cuda").read_text(), "Dockerfile.cuda does not build with --features cuda")

for failure in failures:
    print(f"FAILED: {failure}", file=sys.stderr)
if failures:
    sys.exit(1)
print(f"{len(objects)} Kubernetes objects and {len(services)} compose services agree")
PYTHON

echo "deploy check passed"
