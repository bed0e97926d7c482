"""Static checks of the deployment files (issue 7). No Docker, no network.

docker/compose.yaml, docker/Dockerfile, docker/.env.example and
docker/kuberay/raycluster.yaml are parsed and checked for what a broken deploy
would otherwise only show on a GPU host: images, commands, health checks,
localhost-only ports, GPU reservations, /dev/shm, no literal secrets, and the
Ray / MLflow / torch versions agreeing with pyproject.toml.
"""

from __future__ import annotations

import configparser
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
ENV_EXAMPLE = DOCKER / ".env.example"
RAYCLUSTER = DOCKER / "kuberay" / "raycluster.yaml"
MLFLOW_AUTH_INI = DOCKER / "mlflow-basic-auth.ini"

SERVICES = {"ray-head", "ray-worker", "mlflow", "postgres", "minio", "minio-init"}
ONE_SHOT = {"minio-init"}
RAY_NODES = ("ray-head", "ray-worker")
PROJECT_IMAGE_SERVICES = ("ray-head", "ray-worker", "mlflow")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", re.IGNORECASE)
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}
SUBST = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}")
REQUIRED_SUBST = re.compile(r"^\$\{(\w+):\?[^}]*\}$")
PASSWORD_IN_URI = re.compile(r"://[^/\s:@]+:[^/\s@]+@")  # scheme://user:password@host
PINNED = ("ray", "mlflow", "torch", "torchvision")


# --------------------------------------------------------------------------- helpers


def pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for req in map(Requirement, deps):
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            pins[req.name.lower()] = exact[0]
    return pins


def env_example() -> dict[str, str]:
    """KEY=value lines of docker/.env.example (comments ignored)."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"not KEY=value: {line!r}"
            values[key.strip()] = value.strip()
    return values


def interpolate(node, env: dict[str, str]):
    """Compose-style variable substitution over a parsed YAML tree."""

    def one(text: str) -> str:
        def repl(m: re.Match) -> str:
            if m.group(0) == "$$":
                return "$"
            name, op, arg = m.groups()
            value = env.get(name)
            # With a colon, an empty value counts as unset (as in compose).
            unset = (not value) if op and op.startswith(":") else value is None
            if op in (":-", "-"):
                return arg if unset else value
            if op in (":?", "?"):
                if unset:
                    raise KeyError(f"required variable {name} is missing a value: {arg}")
                return value
            return value or ""

        return SUBST.sub(repl, text)

    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    return one(node) if isinstance(node, str) else node


def variables_in(node) -> dict[str, str | None]:
    """Every ${VAR...} in the string values of a parsed YAML tree (comments are not
    interpolated by compose) -> its operator (None for a bare ${VAR})."""
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, list):
        found = {}
        for item in node:
            found.update(variables_in(item))
        return found
    if isinstance(node, str):
        return {m.group(1): m.group(2) for m in SUBST.finditer(node) if m.group(1)}
    return {}


def filled_env() -> dict[str, str]:
    """.env.example with a dummy value in each empty (secret) slot."""
    return {k: v or f"dummy-{k.lower()}-0123456789" for k, v in env_example().items()}


def command_text(service: dict) -> str:
    cmd = service.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def size_bytes(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([kmg]?)b?", text.strip().lower())
    assert m, f"unreadable size {text!r}"
    return int(m.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[m.group(2)]


def flag(cmd: str, name: str) -> str | None:
    m = re.search(rf"(?<![\w-])--{name}[= ](\S+)", cmd)
    return m.group(1) if m else None


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    lines = [l for l in DOCKERFILE.read_text().splitlines() if not l.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    """compose.yaml as `docker compose config` would see it with .env.example filled in."""
    return interpolate(raw, filled_env())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def raycluster() -> dict:
    docs = [d for d in yaml.safe_load_all(RAYCLUSTER.read_text()) if d]
    clusters = [d for d in docs if d.get("kind") == "RayCluster"]
    assert len(clusters) == 1
    return clusters[0]


# --------------------------------------------------------------------------- compose


def test_compose_has_the_expected_services(services):
    assert set(services) == SERVICES


def test_every_service_has_an_image_and_the_project_image_is_built(services):
    for name, svc in services.items():
        assert svc.get("image") or svc.get("build"), name
    for name in PROJECT_IMAGE_SERVICES:
        build = services[name]["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == ROOT, name
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE
        assert services[name]["image"] == services["ray-head"]["image"]
    for name in ("postgres", "minio", "minio-init"):
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin a tag, got {image}"
    assert services["postgres"]["image"].startswith("postgres:16")


def test_commands(services):
    head = command_text(services["ray-head"])
    assert head.startswith("ray start") and "--head" in head and "--block" in head
    assert flag(head, "port") == "6379"
    assert flag(head, "dashboard-host") == "0.0.0.0"
    assert flag(head, "dashboard-port") == "8265"
    assert flag(head, "num-gpus") == "0"

    worker = command_text(services["ray-worker"])
    assert worker.startswith("ray start") and "--block" in worker and "--head" not in worker
    assert flag(worker, "address") == "ray-head:6379"

    mlflow = command_text(services["mlflow"])
    assert mlflow.startswith("mlflow server")
    assert flag(mlflow, "backend-store-uri").startswith("postgresql+psycopg2://")
    assert "@postgres:5432/" in flag(mlflow, "backend-store-uri")
    assert flag(mlflow, "artifacts-destination") == "s3://mlflow/"
    assert flag(mlflow, "host") == "0.0.0.0" and flag(mlflow, "port") == "5000"
    # MLflow 3 rejects Host headers it does not know; the Ray nodes send "mlflow:5000".
    allowed = flag(mlflow, "allowed-hosts").split(",")
    assert "mlflow:*" in allowed or "mlflow:5000" in allowed

    minio = command_text(services["minio"])
    assert minio.startswith("server /data") and "--console-address :9001" in minio

    init = command_text(services["minio-init"])
    assert re.search(r"mc mb --ignore-existing local/mlflow local/tickets", init)


def test_mlflow_requires_a_login_given_through_the_environment(services):
    """MLflow's basic-auth app is on; the server's admin is the account the Ray nodes log in with,
    through MLFLOW_TRACKING_USERNAME/PASSWORD (read by the MLflow client), never the URI."""
    mlflow = services["mlflow"]
    assert flag(command_text(mlflow), "app-name") == "basic-auth"
    server = environment(mlflow)
    for name in RAY_NODES:
        client = environment(services[name])
        assert "@" not in client["MLFLOW_TRACKING_URI"]
        assert client["MLFLOW_TRACKING_USERNAME"] == server["MLFLOW_AUTH_ADMIN_USERNAME"]
        assert client["MLFLOW_TRACKING_PASSWORD"] == server["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert server["MLFLOW_FLASK_SERVER_SECRET_KEY"]  # the auth app refuses to start without it
    # the configuration is mounted where MLFLOW_AUTH_CONFIG_PATH points, read-only
    mounts = {target: (source, mode) for source, target, *mode in (v.split(":") for v in mlflow["volumes"])}
    source, mode = mounts[server["MLFLOW_AUTH_CONFIG_PATH"]]
    assert (COMPOSE.parent / source).resolve() == MLFLOW_AUTH_INI and mode == ["ro"]
    ini = configparser.ConfigParser()
    ini.read_string(MLFLOW_AUTH_INI.read_text())
    auth = ini["mlflow"]
    assert auth["default_permission"] in ("READ", "NO_PERMISSIONS")
    # users outlive the stateless container: in the PostgreSQL service, password through PGPASSWORD
    assert auth["database_uri"] == flag(command_text(mlflow), "backend-store-uri")
    assert not PASSWORD_IN_URI.search(auth["database_uri"])
    assert "admin_password" not in auth, "the admin password comes from docker/.env, not a file in git"
    # /health is open under basic-auth: the health check sends no credentials and needs none
    assert "/health" in " ".join(mlflow["healthcheck"]["test"])
    # the auth app's CSRF protection needs Flask-WTF, which MLflow only pulls in with its `auth` extra
    runs = " ".join(args for word, args in dockerfile_instructions() if word == "RUN")
    assert re.search(r"[\"']Flask-WTF[<>=,.\d]*[\"']", runs, re.IGNORECASE)


def test_published_ports_are_bound_to_localhost(services):
    published = {}
    for name, svc in services.items():
        for port in svc.get("ports", []):
            if isinstance(port, dict):
                host_ip, target = port.get("host_ip"), int(port["target"])
            else:
                parts = str(port).split(":")
                assert len(parts) == 3, f"{name}: {port!r} must name the host IP"
                host_ip, target = parts[0], int(parts[2].split("/")[0])
            assert host_ip == "127.0.0.1", f"{name}: {port!r} is not bound to 127.0.0.1"
            published.setdefault(name, set()).add(target)
    assert {8265} <= published["ray-head"]
    assert {5000} <= published["mlflow"]
    assert {9001} <= published["minio"]
    assert "postgres" not in published and "ray-worker" not in published


def test_every_long_running_service_has_a_healthcheck(services):
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no"
            continue
        check = svc.get("healthcheck")
        assert check and not check.get("disable"), name
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert svc.get("restart") in ("unless-stopped", "always"), name
    for name in RAY_NODES:  # the agent's unified health endpoint on the pinned agent port
        test = " ".join(services[name]["healthcheck"]["test"])
        assert "127.0.0.1:52365/api/healthz" in test
        assert flag(command_text(services[name]), "dashboard-agent-listen-port") == "52365"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "/health" in " ".join(services["mlflow"]["healthcheck"]["test"])


def test_dependencies_wait_for_health(services):
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: use the long depends_on form with a condition"
        for dep, spec in deps.items():
            cond = spec["condition"]
            if dep in ONE_SHOT:
                assert cond == "service_completed_successfully", (name, dep)
            else:
                assert cond == "service_healthy", (name, dep)
                assert services[dep].get("healthcheck"), dep
    assert "ray-head" in services["ray-worker"]["depends_on"]
    assert "postgres" in services["mlflow"]["depends_on"]
    assert "minio" in services["minio-init"]["depends_on"]


def test_volumes(compose, services):
    declared = set(compose.get("volumes") or {})

    def mounts(name):
        out = {}
        for v in services[name].get("volumes", []):
            source, target, *mode = v.split(":")
            out[target] = (source, mode)
            if not source.startswith(("/", ".", "~")):
                assert source in declared, f"{name}: named volume {source} not declared"
        return out

    assert mounts("postgres")["/var/lib/postgresql/data"][0] in declared
    assert mounts("minio")["/data"][0] in declared
    for name in RAY_NODES:
        m = mounts(name)
        assert "/mnt/shared" in m
        assert m["/data"][1] == ["ro"], f"{name}: data sets are mounted read-only"


def test_gpu_reservation_on_the_worker_only(services):
    devices = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert all("count" in d or "device_ids" in d for d in devices)
    for name in set(services) - {"ray-worker"}:
        assert "devices" not in str(services[name].get("deploy", "")), name


def test_shm_sized_for_the_object_store(services):
    for name in RAY_NODES:
        svc = services[name]
        shm = size_bytes(svc["shm_size"])
        assert shm >= 2**30, f"{name}: /dev/shm below 1 GiB"
        store = int(flag(command_text(svc), "object-store-memory"))
        assert 0 < store < shm, f"{name}: object store must fit in /dev/shm"


def test_no_literal_secrets_in_compose(raw):
    for name, svc in raw["services"].items():
        for key, value in environment(svc).items():
            if SECRET_NAME.search(key):
                assert REQUIRED_SUBST.match(value), f"{name}.{key} must be ${{VAR:?...}}, not a literal"
        cmd = command_text(svc)
        assert not PASSWORD_IN_URI.search(cmd), f"{name}: credentials in a URI"
        for key, value in environment(svc).items():
            assert not PASSWORD_IN_URI.search(value), f"{name}.{key}: credentials in a URI"
        assert "env_file" not in svc or all(".example" not in str(f) for f in svc["env_file"])
    text = COMPOSE.read_text()
    for line in text.splitlines():  # no secret-looking KEY: value outside ${...}
        m = re.match(r"\s*([A-Z_]+):\s*(\S.*)$", line)
        if m and SECRET_NAME.search(m.group(1)):
            assert m.group(2).strip("\"'").startswith("${"), line


def test_environment_points_at_s3_and_the_mlflow_service(services):
    for name in RAY_NODES:
        env = environment(services[name])
        assert env["LTH_STORE_URI"].startswith("s3://tickets")
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"]
        assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]
    env = environment(services["mlflow"])
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["PGPASSWORD"] == environment(services["postgres"])["POSTGRES_PASSWORD"]
    # The application key is not the MinIO root account.
    assert env["AWS_ACCESS_KEY_ID"] != environment(services["minio"])["MINIO_ROOT_USER"]


def test_env_example_defines_every_variable_compose_reads(raw):
    used = variables_in(raw)
    defined = env_example()
    text = ENV_EXAMPLE.read_text()
    required = {v for v, op in used.items() if op in (":?", "?")}
    assert required >= {"POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD",
                        "LTH_S3_ACCESS_KEY", "LTH_S3_SECRET_KEY", "RAY_AUTH_TOKEN",
                        "MLFLOW_TRACKING_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"}
    for var in required:
        assert var in defined, f"{var} is required by compose.yaml but not in .env.example"
        assert defined[var] == "", f"{var}: .env.example must not ship a usable secret"
    for var in used:  # optional ones are documented, at least as a comment
        assert re.search(rf"^#?\s*{var}=", text, re.MULTILINE), f"{var} not in .env.example"


def test_compose_refuses_to_start_without_secrets(raw):
    env = filled_env()
    interpolate(raw, env)  # complete: renders
    for var in ("POSTGRES_PASSWORD", "RAY_AUTH_TOKEN", "LTH_S3_SECRET_KEY", "MLFLOW_TRACKING_PASSWORD",
                "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        with pytest.raises(KeyError, match=var):
            interpolate(raw, {**env, var: ""})


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_runs_as_non_root_with_a_healthcheck():
    ins = dockerfile_instructions()
    users = [args for word, args in ins if word == "USER"]
    assert users, "no USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    health = [args for word, args in ins if word == "HEALTHCHECK"]
    assert health and "NONE" not in health[-1].upper()
    assert any(word == "WORKDIR" for word, _ in ins)


def test_dockerfile_base_matches_requires_python():
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    text = DOCKERFILE.read_text()
    base = re.search(r"PYTHON_IMAGE=(\S+)", text) or re.search(r"^FROM\s+(\S+)", text, re.M)
    m = re.search(r"python:(\d+\.\d+)", base.group(1))
    assert m and m.group(1) == "3.11" and ">=3.11" in requires


def test_dockerfile_installs_the_project_with_its_own_pins():
    ins = dockerfile_instructions()
    runs = " && ".join(args for word, args in ins if word == "RUN")
    copies = " ".join(args for word, args in ins if word == "COPY")
    assert "pyproject.toml" in copies
    assert re.search(r"pip install (--no-deps )?\.(\s|$)", runs), "the project is installed with pip install ."
    assert "pyproject.toml" in runs and "dependencies" in runs, "dependencies come from pyproject.toml"
    assert "pip check" in runs


def test_no_file_repins_ray_mlflow_or_torch_differently():
    pins = pyproject_pins()
    for pkg in PINNED:
        assert pkg in pins, f"pyproject.toml no longer pins {pkg}"
    pattern = re.compile(r"\b(ray|mlflow|torch|torchvision)(\[[\w,]+\])?\s*[=~<>!]=\s*([\w.]+)")
    for path in (DOCKERFILE, COMPOSE, RAYCLUSTER):
        for m in pattern.finditer(path.read_text()):
            assert m.group(3) == pins[m.group(1)], f"{path.name} pins {m.group(0)}; pyproject has {pins[m.group(1)]}"


def test_no_secrets_baked_into_the_image():
    for word, args in dockerfile_instructions():
        if word in ("ENV", "ARG"):
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) + args.split()[:1]:
                assert not SECRET_NAME.search(name), f"{word} {name} in the Dockerfile"
    ignore = (ROOT / ".dockerignore").read_text().split()
    for entry in (".env", ".git", ".venv", "mlruns", "runs", "artifacts"):
        assert entry in ignore, f".dockerignore should exclude {entry}"


# --------------------------------------------------------------------------- KubeRay


def test_raycluster_matches_the_project(raycluster):
    assert raycluster["apiVersion"] == "ray.io/v1"
    assert raycluster["spec"]["rayVersion"] == pyproject_pins()["ray"]


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def test_raycluster_head_and_gpu_workers(raycluster):
    spec = raycluster["spec"]
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    workers = spec["workerGroupSpecs"]
    assert workers
    for group in workers:
        assert group["groupName"] and group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = _containers(group)[0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
    images = {c["image"] for g in [head, *workers] for c in _containers(g)}
    assert len(images) == 1 and not next(iter(images)).startswith("rayproject/"), images
    for value in [*head["rayStartParams"].values(), *(v for g in workers for v in g["rayStartParams"].values())]:
        assert isinstance(value, str), "rayStartParams values must be strings"


def test_raycluster_env_shm_and_no_literal_secrets(raycluster):
    docs = [d for d in yaml.safe_load_all(RAYCLUSTER.read_text()) if d]
    config = next(d for d in docs if d.get("kind") == "ConfigMap")
    assert config["data"]["LTH_STORE_URI"].startswith("s3://")
    assert config["data"]["MLFLOW_TRACKING_URI"].startswith("http")
    assert not [d for d in docs if d.get("kind") == "Secret"], "create the Secret with kubectl, not in git"
    spec = raycluster["spec"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        container = _containers(group)[0]
        refs = [e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e]
        assert config["metadata"]["name"] in refs
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        for name, entry in env.items():
            if SECRET_NAME.search(name):
                assert "secretKeyRef" in entry.get("valueFrom", {}), f"{name} must come from a Secret"
        shm = {v["name"]: v for v in pod["volumes"]}
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
        assert shm[mount["name"]]["emptyDir"]["medium"] == "Memory"


# --------------------------------------------------------------------------- guide


def test_cluster_guide_covers_the_workflow():
    guide = (ROOT / "docs" / "cluster.md").read_text()
    for needle in (
        "docker/.env.example",
        "ray job submit --working-dir .",
        "sweeps/full_grid.py --preset paper",
        "--store s3://tickets/",
        "--tracking-uri http://mlflow:5000",
        "--name",
        "--data-root /data",
        "RAY_AUTH_MODE=token",
        "RAY_AUTH_TOKEN",
        "--app-name basic-auth",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "http://127.0.0.1:5000",
        "ray status",
        "Tuner.restore",
        "kubectl apply -f docker/kuberay/raycluster.yaml",
    ):
        assert needle in guide, needle
    for ref in set(re.findall(r"`(docker/[\w./-]+)`", guide)) - {"docker/.env"}:
        assert (ROOT / ref).exists(), f"docs/cluster.md names missing file {ref}"
