"""deploy/kubernetes/ is valid for Kubernetes and KEDA, and runs the commands, settings, routes and queue the code has.

Offline: kustomize renders the folder (kubectl), kubernetes-validate and KEDA's schemas (npm) check the objects.
Nothing here has run on a cluster.
"""

import base64
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from app import create_app
from serving.config import Settings, parse_redis_url
from serving.protocol import Keys, model_id
from stack.processes import API_ARGUMENTS, WORKER_ARGUMENTS
from tests.repo.test_deployment import default_of  # compose's `${NAME:-default}` spelling

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.37"  # the newest release whose schemas kubernetes-validate (requirements.txt) ships
KEDA_PACKAGES = ROOT / ".node"  # scripts/ensure-keda-schema.sh installs @kubernetes-models/keda here
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
SETTING_NAMES = {f.metadata["env"] for f in dataclasses.fields(Settings)}
API, WORKER, CONFIG, SECRET = "imgcls-api", "imgcls-worker", "imgcls-config", "imgcls-redis"
PASSWORD = "0123456789abcdef0123456789abcdef"
# deploy/kubernetes/README.md's redis.env for the trial Redis, with PASSWORD.
REDIS_ENV = (f"REDIS_URL=redis://:{PASSWORD}@redis.imgcls.svc:6379/0\naddress=redis.imgcls.svc:6379\n"
             f"password={PASSWORD}\n")
# Constructs each KEDA object from stdin with its model class and validates it; prints what is wrong.
VALIDATE_KEDA = """
import { readFileSync } from "node:fs";
import * as keda from "@kubernetes-models/keda/keda.sh/v1alpha1";
for (const object of JSON.parse(readFileSync(0, "utf8"))) {
  try { new keda[object.kind](object).validate(); }
  catch (error) { console.log(`${object.kind}/${object.metadata.name}: ${error.message}`); }
}
"""


def kustomize(folder: Path) -> subprocess.CompletedProcess:
    if shutil.which("kubectl") is None:
        pytest.fail("no kubectl to render deploy/kubernetes: `make test-tools` installs Debian's kubernetes-client")
    return subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True)


def copy_of_the_folder(destination: Path, redis_env: str | None) -> Path:
    """The folder as the repository has it (a user's own redis.env left out), with `redis_env` as its redis.env."""
    copy = shutil.copytree(FOLDER, destination / "kubernetes", ignore=shutil.ignore_patterns("redis.env"))
    if redis_env is not None:
        (copy / "redis.env").write_text(redis_env)
    return copy


@cache
def rendered() -> tuple[dict, ...]:
    """The objects `kubectl apply -k deploy/kubernetes` would send, as kustomize renders them from the redis.env
    the README says to write."""
    with tempfile.TemporaryDirectory() as scratch:
        output = kustomize(copy_of_the_folder(Path(scratch), REDIS_ENV))
    assert output.returncode == 0, output.stderr
    return tuple(yaml.safe_load_all(output.stdout))


def find(kind: str, name: str) -> dict:
    (found,) = [o for o in rendered() if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def pod_spec(deployment: str) -> dict:
    return find("Deployment", deployment)["spec"]["template"]["spec"]


def container(deployment: str) -> dict:
    (only,) = pod_spec(deployment)["containers"]
    return only


def selects(selector: dict, deployment: str) -> bool:
    labels = find("Deployment", deployment)["spec"]["template"]["metadata"]["labels"]
    return selector.items() <= labels.items()


def settings() -> Settings:
    """The settings API and workers run with: the ConfigMap's, and REDIS_URL from the Secret."""
    return Settings.from_env({**find("ConfigMap", CONFIG)["data"], "REDIS_URL": redis_secret()["REDIS_URL"]})


def redis_secret() -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in find("Secret", SECRET)["data"].items()}


def redis_trigger() -> dict:
    (trigger,) = find("ScaledObject", WORKER)["spec"]["triggers"]
    return trigger


def quantity(value: str) -> float:
    """A Kubernetes quantity ("500m", "2", "1536Mi") as a number of cores or bytes."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    unit = next((u for u in units if value.endswith(u)), None)
    return float(value[:-len(unit)]) * units[unit] if unit else float(value)


def test_no_password_ships_the_folder_renders_only_with_the_users_redis_env(tmp_path):
    refused = kustomize(copy_of_the_folder(tmp_path, None))
    assert refused.returncode != 0 and "redis.env" in refused.stderr
    assert not [path.name for path in FOLDER.iterdir() if "change-me" in path.read_text()]
    assert redis_secret() == dict(line.split("=", 1) for line in REDIS_ENV.splitlines())


def test_the_readme_writes_the_redis_env_the_folder_renders_with(tmp_path):
    (block,) = [b for b in re.findall(r"```sh\n(.*?)```", (FOLDER / "README.md").read_text(), re.S) if "redis.env" in b]
    script = block[block.index("PASSWORD="):block.index("\nEOF\n") + 5].replace("deploy/kubernetes/", "")
    subprocess.run(["sh", "-c", script], cwd=copy_of_the_folder(tmp_path, None), check=True)
    written = dict(line.split("=", 1) for line in (tmp_path / "kubernetes" / "redis.env").read_text().splitlines())
    assert set(written) == {"REDIS_URL", "address", "password"} and len(written["password"]) == 64
    assert written["REDIS_URL"] == f"redis://:{written['password']}@{written['address']}/0"
    assert kustomize(tmp_path / "kubernetes").returncode == 0


def test_only_the_api_the_workers_and_kedas_namespace_reach_redis():
    policy = find("NetworkPolicy", "redis")["spec"]
    redis_labels = find("StatefulSet", "redis")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= redis_labels.items()
    assert not selects(policy["podSelector"]["matchLabels"], API) and not selects(policy["podSelector"]["matchLabels"],
                                                                                  WORKER)
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    peers = rule["from"]
    pods = [peer["podSelector"]["matchLabels"] for peer in peers if set(peer) == {"podSelector"}]
    namespaces = [peer["namespaceSelector"]["matchLabels"] for peer in peers if set(peer) == {"namespaceSelector"}]
    assert len(pods) + len(namespaces) == len(peers)  # no other kind of peer (ipBlock, both at once)
    assert sorted(deployment for deployment in (API, WORKER) for labels in pods if selects(labels, deployment)) == \
        [API, WORKER]
    assert all(not labels.items() <= redis_labels.items() for labels in pods) and len(pods) == 2
    assert namespaces == [{"kubernetes.io/metadata.name": "keda"}]  # KEDA's operator reads the queue's length
    (redis,) = find("StatefulSet", "redis")["spec"]["template"]["spec"]["containers"]
    assert rule["ports"] == [{"port": port["containerPort"], "protocol": "TCP"} for port in redis["ports"]]


def test_the_kustomization_lists_every_manifest_in_the_folder():
    kustomization = yaml.safe_load((FOLDER / "kustomization.yaml").read_text())
    manifests = {path.name for path in FOLDER.iterdir() if path.suffix in (".yaml", ".yml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(manifests)


def test_every_kubernetes_object_validates_strictly_against_the_kubernetes_schema():
    errors = []
    for obj in rendered():
        if obj["apiVersion"].startswith("keda.sh/"):
            continue  # KEDA's own schema checks these (next test)
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {'.'.join(map(str, error.path))}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(error.message)
    assert not errors, "\n".join(errors)


def test_the_keda_objects_validate_against_kedas_schema():
    objects = [obj for obj in rendered() if obj["apiVersion"].startswith("keda.sh/")]
    assert sorted(obj["kind"] for obj in objects) == ["ScaledObject", "TriggerAuthentication"]
    if not (KEDA_PACKAGES / "node_modules" / "@kubernetes-models" / "keda").is_dir() or not shutil.which("node"):
        pytest.fail("no node or no KEDA schema package: `make test-tools` installs it (scripts/ensure-keda-schema.sh)")
    checked = subprocess.run(["node", "--input-type=module", "-e", VALIDATE_KEDA], input=json.dumps(objects),
                             cwd=KEDA_PACKAGES, capture_output=True, text=True)
    assert checked.returncode == 0 and not checked.stdout, checked.stdout + checked.stderr


def test_both_programs_run_composes_image_with_the_commands_make_run_runs():
    for deployment, arguments in ((API, API_ARGUMENTS), (WORKER, WORKER_ARGUMENTS)):
        program = container(deployment)
        assert program["image"] == default_of(COMPOSE[deployment.removeprefix("imgcls-")]["image"])
        # The image has no ENTRYPOINT: args alone would replace its CMD and run "-m" as a program.
        assert program["command"] == ["python"] and program["args"] == list(arguments)


def test_the_configmap_sets_only_settings_the_code_reads_to_values_it_accepts():
    config = find("ConfigMap", CONFIG)["data"]
    assert set(config) <= SETTING_NAMES, set(config) - SETTING_NAMES
    assert "REDIS_URL" not in config  # it may hold a password: the Secret's
    settings()  # ConfigError for a value the API or a worker would refuse at start


def test_both_programs_read_the_configmap_and_redis_url_from_the_secret():
    for deployment in (API, WORKER):
        program = container(deployment)
        assert program["envFrom"] == [{"configMapRef": {"name": CONFIG}}]
        env = {variable["name"]: variable for variable in program["env"]}
        assert set(env) <= SETTING_NAMES, set(env) - SETTING_NAMES
        assert env["REDIS_URL"]["valueFrom"] == {"secretKeyRef": {"name": SECRET, "key": "REDIS_URL"}}


def test_the_api_listens_on_the_configmaps_port_and_its_service_forwards_there():
    assert settings().host == "0.0.0.0"
    (port,) = container(API)["ports"]
    assert port["containerPort"] == settings().port
    service = find("Service", API)["spec"]
    (forwarded,) = service["ports"]
    assert forwarded["targetPort"] in (port["name"], port["containerPort"])
    assert selects(service["selector"], API) and not selects(service["selector"], WORKER)


def test_the_api_probes_and_metrics_annotation_name_routes_the_app_has():
    app = create_app(Settings())
    routes = {rule.rule for rule in app.url_map.iter_rules() if "GET" in rule.methods}
    api = container(API)
    readiness, liveness = api["readinessProbe"]["httpGet"], api["livenessProbe"]["httpGet"]
    assert (readiness["path"], liveness["path"]) == ("/readyz", "/healthz")
    (port,) = api["ports"]
    for probe in (readiness, liveness):
        assert probe["path"] in routes and probe["port"] in (port["name"], port["containerPort"])
    # Liveness needs no Redis (none runs here), so a Redis outage restarts no API pod.
    assert app.test_client().get(liveness["path"]).status_code == 200
    annotations = find("Deployment", API)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] in routes and int(annotations["prometheus.io/port"]) == settings().port


def test_a_stopping_api_pod_leaves_the_service_then_finishes_its_requests(tmp_path):
    spec = pod_spec(API)
    sleep, seconds = container(API)["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep == "sleep"
    # gunicorn's own grace for requests in flight, as app/gunicorn_conf.py derives it from these settings.
    env = {**os.environ, **find("ConfigMap", CONFIG)["data"], "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    read = "from app import gunicorn_conf; print(gunicorn_conf.graceful_timeout)"
    graceful = subprocess.run([sys.executable, "-c", read], env=env, cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout
    assert spec["terminationGracePeriodSeconds"] > int(seconds) + int(graceful)


def test_a_stopping_worker_has_time_to_finish_its_batch_and_hand_back_the_rest():
    # Its batch is worth finishing within REQUEST_TIMEOUT (its clients have had 504 after that), its wait for
    # messages ends within a heartbeat period, then it hands back what it has not started (worker/loop.py).
    assert pod_spec(WORKER)["terminationGracePeriodSeconds"] > settings().request_timeout + settings().heartbeat_seconds
    worker = container(WORKER)
    assert not {"ports", "readinessProbe", "livenessProbe", "startupProbe"} & set(worker)  # no port to probe


def test_a_worker_rollout_starts_a_new_worker_before_it_stops_an_old_one():
    spec = find("Deployment", WORKER)["spec"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["minReadySeconds"] > 0  # with no readiness probe, the time a new worker gets to load its model


def test_each_worker_computes_with_one_thread_per_core_it_has():
    worker = container(WORKER)
    threads = next(int(v["value"]) for v in worker["env"] if v["name"] == "INFERENCE_THREADS")
    # Left at 0 it would be half of the node's cores, which the process sees, not the container's.
    resources = worker["resources"]
    assert threads == quantity(resources["requests"]["cpu"]) == quantity(resources["limits"]["cpu"])


def test_the_workers_engine_cache_is_a_volume_at_engine_cache_dir():
    (mount,) = container(WORKER)["volumeMounts"]
    assert mount["mountPath"] == settings().engine_cache_dir
    volumes = {volume["name"]: volume for volume in pod_spec(WORKER)["volumes"]}
    assert "emptyDir" in volumes[mount["name"]]


def test_the_api_memory_limit_holds_every_process_decoding_its_full_budget():
    # DECODE_PIXEL_BUDGET pixels per process at about 12 bytes each at the peak (README "Configuration").
    limit = quantity(container(API)["resources"]["limits"]["memory"])
    assert limit > settings().api_processes * settings().decode_pixel_budget * 12


def test_keda_scales_the_workers_on_the_queue_the_api_fills():
    assert find("ScaledObject", WORKER)["spec"]["scaleTargetRef"] == {"name": WORKER}
    trigger = redis_trigger()
    assert trigger["type"] == "redis"  # one Redis server, as REDIS_URL names (README.md beside the manifests: others)
    assert parse_redis_url(settings().redis_url).kind == "server"
    queue = Keys(settings().key_prefix, model_id(settings().model_name, settings().model_version)).queue
    assert trigger["metadata"]["listName"] == queue


def test_keda_asks_for_a_worker_per_full_batch_queued_and_never_for_none():
    spec, metadata = find("ScaledObject", WORKER)["spec"], redis_trigger()["metadata"]
    assert int(metadata["listLength"]) == settings().batch_size
    # The API refuses at MAX_QUEUE (503 queue_full): the queue must be able to grow deep enough to ask for the most.
    assert spec["maxReplicaCount"] * int(metadata["listLength"]) <= settings().max_queue
    # With no worker the API answers 503 no_worker and queues nothing: an empty fleet would never be woken.
    assert spec["minReplicaCount"] >= 1


def test_keda_reads_the_same_redis_as_the_service():
    trigger = redis_trigger()
    authentication = find("TriggerAuthentication", trigger["authenticationRef"]["name"])["spec"]["secretTargetRef"]
    assert {ref["name"] for ref in authentication} == {SECRET}
    parameters = {ref["parameter"]: redis_secret()[ref["key"]] for ref in authentication}
    url = urllib.parse.urlsplit(settings().redis_url)
    assert parameters == {"address": f"{url.hostname}:{url.port}", "password": url.password}
    assert int(trigger["metadata"].get("databaseIndex", 0)) == int(url.path.strip("/") or 0)


def test_the_secret_names_the_trial_redis_so_that_kedas_operator_finds_it_too():
    url = urllib.parse.urlsplit(settings().redis_url)
    service = find("Service", "redis")
    # KEDA's operator connects from its own namespace: the name carries this one.
    assert url.hostname == f"redis.{service['metadata']['namespace']}.svc"
    assert url.port in {port["port"] for port in service["spec"]["ports"]}
    (redis,) = find("StatefulSet", "redis")["spec"]["template"]["spec"]["containers"]
    env = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in redis["env"]}
    assert env["REDIS_PASSWORD"] == env["REDISCLI_AUTH"] == {"name": SECRET, "key": "password"}
    # As configuration on redis-server's standard input, not on its command line: `ps` on the node shows those.
    assert "redis-server - " in redis["args"][-1] and "<<EOF\nrequirepass $REDIS_PASSWORD\nEOF" in redis["args"][-1]


def test_the_trial_redis_runs_composes_image_and_persistence_on_a_volume():
    statefulset = find("StatefulSet", "redis")["spec"]
    (redis,) = statefulset["template"]["spec"]["containers"]
    assert redis["image"] == default_of(COMPOSE["redis"]["image"])
    # "$$" is compose's escape for the container's own "$", which Kubernetes leaves alone (it expands only "$(...)").
    assert redis["command"] + redis["args"] == [part.replace("$$", "$") for part in COMPOSE["redis"]["command"]]
    (claim,) = statefulset["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in redis["volumeMounts"]


def test_autoscaled_deployments_leave_their_replica_count_to_the_autoscaler():
    for deployment in (API, WORKER):
        assert "replicas" not in find("Deployment", deployment)["spec"]  # an apply would reset the autoscaler's
    hpa = find("HorizontalPodAutoscaler", API)["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": API}
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert "cpu" in container(API)["resources"]["requests"]  # utilization is a share of the request


def test_a_disruption_lets_one_pod_of_each_program_go_at_a_time_and_leaves_one():
    for deployment, other in ((API, WORKER), (WORKER, API)):
        budget = find("PodDisruptionBudget", deployment)["spec"]
        assert budget["maxUnavailable"] == 1
        assert selects(budget["selector"]["matchLabels"], deployment)
        assert not selects(budget["selector"]["matchLabels"], other)
    assert find("HorizontalPodAutoscaler", API)["spec"]["minReplicas"] >= 2
    assert find("ScaledObject", WORKER)["spec"]["minReplicaCount"] >= 2


def test_both_programs_run_as_the_images_numeric_user_which_kubernetes_checks_is_not_root():
    (user,) = {line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("USER ")}
    # runAsNonRoot refuses to start an image whose USER is a name: the kubelet cannot tell a name is not root.
    assert user.isdigit() and int(user) != 0
    for deployment in (API, WORKER):
        assert pod_spec(deployment)["securityContext"]["runAsNonRoot"] is True
        assert container(deployment)["securityContext"]["allowPrivilegeEscalation"] is False
