#!/usr/bin/env bash
# test_deploy_files.sh - checks the deployment files (deploy/, Dockerfile)
# against each other and against the service: the ports, probe paths,
# labels, Secret and ConfigMap references, shutdown timeouts and setting
# names that must agree, plus the compose file with `docker-compose config -q`
# and the systemd unit with `systemd-analyze verify` where those exist.
#
#   bash tests/container/test_deploy_files.sh
#
# Fast, needs no podman and no network. Skips (77) without python3-yaml.
# TASKBUS_SOURCE_DIR: the source tree (default: the one holding this file).
set -uo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=${TASKBUS_SOURCE_DIR:-$(cd "$SCRIPT_DIR/../.." && pwd)}
PY=/usr/bin/python3

log() { printf 'test_deploy_files: %s\n' "$*" >&2; }

if ! "$PY" -c 'import yaml' 2>/dev/null; then
    log "SKIP: $PY has no yaml module (Debian package python3-yaml)"
    exit 77
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
FAILED=0

# ---- the cross-checks, in Python (YAML, INI-ish unit, Dockerfile)
"$PY" - "$SRC" <<'PYEOF' || FAILED=1
import glob, os, re, sys
import yaml

src = sys.argv[1]
dep = os.path.join(src, "deploy")
errors = []


def ok(msg):
    print("test_deploy_files: ok: " + msg, file=sys.stderr)


def fail(msg):
    errors.append(msg)
    print("test_deploy_files: FAIL: " + msg, file=sys.stderr)


def check(cond, good, bad):
    ok(good) if cond else fail(bad)
    return cond


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


# -- Dockerfile: the runtime stage (after the last FROM)
lines, cur = [], ""
for raw in read(os.path.join(src, "Dockerfile")).splitlines():
    s = raw.strip()
    if not s or s.startswith("#"):
        continue
    cur += " " + s[:-1] if s.endswith("\\") else " " + s
    if not s.endswith("\\"):
        lines.append(cur.strip())
        cur = ""
last_from = max(i for i, l in enumerate(lines) if l.upper().startswith("FROM "))
final = lines[last_from:]


def instr(name):
    return [l[len(name):].strip() for l in final if l.upper().startswith(name + " ")]


expose = instr("EXPOSE")
PORT = int(expose[0].split("/")[0]) if expose else None
check(PORT == 8080, "Dockerfile EXPOSE %s" % PORT, "Dockerfile EXPOSE is %s, want 8080" % expose)
user = instr("USER")
UID = user[-1].split(":")[0] if user else None
check(UID == "10001", "Dockerfile USER %s" % user[-1] if user else "",
      "Dockerfile USER is %s, want numeric 10001" % user)
env_listen = [l for l in instr("ENV") if l.startswith("TASKBUS_LISTEN=")]
check(env_listen and env_listen[-1].endswith(":%s" % PORT),
      "Dockerfile TASKBUS_LISTEN matches EXPOSE",
      "Dockerfile ENV TASKBUS_LISTEN %s does not listen on %s" % (env_listen, PORT))
hc = instr("HEALTHCHECK")
check(hc and re.search(r'CMD \["taskbus", "healthcheck"\]$', hc[-1]),
      "Dockerfile HEALTHCHECK: exec form of taskbus healthcheck",
      "Dockerfile HEALTHCHECK is %s, want CMD [\"taskbus\", \"healthcheck\"]" % hc)
for name in ("ENTRYPOINT", "CMD"):
    v = instr(name)
    check(v and v[-1].startswith("["), "Dockerfile %s in exec form" % name,
          "Dockerfile %s is %s: use the exec form (signals reach PID 1)" % (name, v))
docker_env = {l.split("=", 1)[0] for l in instr("ENV")}

# -- Kubernetes manifests
k8s_dir = os.path.join(dep, "k8s")
objs, by_file = {}, {}
for path in sorted(glob.glob(os.path.join(k8s_dir, "*.yaml"))):
    try:
        docs = [d for d in yaml.safe_load_all(read(path)) if d is not None]
    except yaml.YAMLError as e:
        fail("%s does not parse: %s" % (path, e))
        continue
    by_file[os.path.basename(path)] = docs
    for d in docs:
        if "kind" not in d:
            fail("%s: a document without kind" % path)
            continue
        if d["kind"] == "Kustomization":
            continue
        key = (d["kind"], d.get("metadata", {}).get("name"))
        if key in objs:
            fail("%s: %s/%s defined twice" % (path, *key))
        objs[key] = d
ok("k8s: %d files, %d objects parse" % (len(by_file), len(objs)))


def get(kind, name):
    o = objs.get((kind, name))
    if o is None:
        fail("k8s: no %s named %s" % (kind, name))
    return o


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def find_by_label(kind, pred):
    return [o for (k, _), o in objs.items() if k == kind and pred(o)]


deploy = get("Deployment", "taskbus")
redis_deploy = get("Deployment", "taskbus-redis")
cm = get("ConfigMap", "taskbus-config")
if not (deploy and redis_deploy and cm):
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
cmdata = cm.get("data", {})
spec = deploy["spec"]
pod = spec["template"]
pod_labels = pod["metadata"]["labels"]
redis_labels = redis_deploy["spec"]["template"]["metadata"]["labels"]
check(spec.get("replicas") == 3, "taskbus Deployment: 3 replicas",
      "taskbus Deployment replicas is %s, want 3" % spec.get("replicas"))
check(matches(spec["selector"]["matchLabels"], pod_labels)
      and not matches(spec["selector"]["matchLabels"], redis_labels),
      "taskbus Deployment selector matches its pods only",
      "taskbus Deployment selector does not match its pods, or matches Redis's")
ctr = [c for c in pod["spec"]["containers"] if c["name"] == "taskbus"]
if not check(len(ctr) == 1, "taskbus container present", "no container named taskbus"):
    sys.exit(1)
ctr = ctr[0]
ports = {p.get("name"): p["containerPort"] for p in ctr.get("ports", [])}
check(PORT in ports.values(), "taskbus containerPort %s" % PORT,
      "taskbus container ports %s lack %s (Dockerfile EXPOSE)" % (ports, PORT))
check(cmdata.get("TASKBUS_LISTEN", "").endswith(":%s" % PORT),
      "ConfigMap TASKBUS_LISTEN on port %s" % PORT,
      "ConfigMap TASKBUS_LISTEN %r is not port %s" % (cmdata.get("TASKBUS_LISTEN"), PORT))


def port_of(ref, named):
    return named.get(ref) if isinstance(ref, str) else ref


for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"),
                    ("startupProbe", None)):
    p = ctr.get(probe)
    if p is None:
        if path:
            fail("taskbus container has no %s" % probe)
        continue
    g = p.get("httpGet", {})
    want = path or g.get("path")
    check(g.get("path") == want and g.get("path") in ("/readyz", "/healthz")
          and port_of(g.get("port"), ports) == PORT,
          "%s: GET %s on port %s" % (probe, g.get("path"), PORT),
          "%s is %s, want GET %s on port %s" % (probe, g, want, PORT))

env_from = [e["configMapRef"]["name"] for e in ctr.get("envFrom", []) if "configMapRef" in e]
check("taskbus-config" in env_from, "env from ConfigMap taskbus-config",
      "taskbus container envFrom %s lacks the ConfigMap" % env_from)
tok = [e for e in ctr.get("env", []) if e.get("name") == "TASKBUS_TOKEN"]
ref = tok[0].get("valueFrom", {}).get("secretKeyRef") if tok else None
if check(ref is not None, "TASKBUS_TOKEN from a Secret",
         "TASKBUS_TOKEN does not come from a secretKeyRef"):
    sec = get("Secret", ref["name"])
    if sec:
        keys = set(sec.get("stringData", {})) | set(sec.get("data", {}))
        check(ref["key"] in keys, "Secret %s has key %s" % (ref["name"], ref["key"]),
              "Secret %s has no key %s" % (ref["name"], ref["key"]))
        val = str(sec.get("stringData", {}).get(ref["key"], ""))
        check("PLACEHOLDER" in val.upper(), "Secret value is marked as a placeholder",
              "Secret value %r does not say it is a placeholder" % val)

psc, csc = pod["spec"].get("securityContext", {}), ctr.get("securityContext", {})
check(psc.get("runAsNonRoot") is True and str(psc.get("runAsUser")) == UID,
      "pod runs as non-root uid %s (Dockerfile USER)" % UID,
      "pod securityContext %s: want runAsNonRoot and runAsUser %s" % (psc, UID))
check(csc.get("allowPrivilegeEscalation") is False and csc.get("readOnlyRootFilesystem") is True,
      "container: no privilege escalation, read-only root",
      "container securityContext %s" % csc)
res = ctr.get("resources", {})
check(res.get("requests") and res.get("limits", {}).get("memory"),
      "resources: requests and a memory limit", "resources %s incomplete" % res)
delay = int(cmdata.get("TASKBUS_SHUTDOWN_DELAY", 0))
graceful = int(cmdata.get("TASKBUS_GRACEFUL_TIMEOUT", 15))
tgp = pod["spec"].get("terminationGracePeriodSeconds", 30)
check(tgp > delay + graceful,
      "terminationGracePeriodSeconds %s > shutdown delay %s + graceful timeout %s" % (tgp, delay, graceful),
      "terminationGracePeriodSeconds %s <= shutdown delay %s + graceful timeout %s" % (tgp, delay, graceful))

svc = get("Service", "taskbus")
if svc:
    sel = svc["spec"]["selector"]
    check(matches(sel, pod_labels) and not matches(sel, redis_labels),
          "Service taskbus selects the taskbus pods only",
          "Service taskbus selector %s does not select the taskbus pods only" % sel)
    tps = [port_of(p.get("targetPort", p["port"]), ports) for p in svc["spec"]["ports"]]
    check(PORT in tps, "Service taskbus targets container port %s" % PORT,
          "Service taskbus targetPorts %s miss containerPort %s" % (tps, PORT))
    check("sessionAffinity" not in svc["spec"] or svc["spec"]["sessionAffinity"] == "None",
          "Service taskbus without session affinity (not needed: events reach every pod)",
          "Service taskbus sets sessionAffinity")
pdbs = find_by_label("PodDisruptionBudget", lambda o: matches(o["spec"]["selector"]["matchLabels"], pod_labels))
check(len(pdbs) == 1 and not matches(pdbs[0]["spec"]["selector"]["matchLabels"], redis_labels),
      "one PodDisruptionBudget for the taskbus pods", "PodDisruptionBudgets for taskbus: %d" % len(pdbs))

# Redis: the URL of the ConfigMap names the Redis Service and its port.
url = cmdata.get("TASKBUS_REDIS_URL", "")
m = re.match(r"redis://(?:[^@/]*@)?([^:/]+)(?::(\d+))?", url)
rsvc = objs.get(("Service", m.group(1))) if m else None
if check(rsvc is not None, "TASKBUS_REDIS_URL %s names a Service" % url,
         "TASKBUS_REDIS_URL %r names no Service of deploy/k8s" % url):
    rport = int(m.group(2) or 6379)
    rctr = redis_deploy["spec"]["template"]["spec"]["containers"][0]
    rports = {p.get("name"): p["containerPort"] for p in rctr.get("ports", [])}
    sp = [p for p in rsvc["spec"]["ports"] if p["port"] == rport]
    check(matches(rsvc["spec"]["selector"], redis_labels) and sp
          and port_of(sp[0].get("targetPort", rport), rports) in rports.values(),
          "Service %s:%d reaches the Redis container" % (m.group(1), rport),
          "Service %s does not route port %d to the Redis pods" % (m.group(1), rport))
    args = " ".join(str(a) for a in rctr.get("command", []) + rctr.get("args", []))
    check("client-output-buffer-limit" in args and "pubsub" in args,
          "Redis sets client-output-buffer-limit pubsub",
          "Redis args lack --client-output-buffer-limit pubsub: %s" % args)

kust = by_file.get("kustomization.yaml", [{}])[0]
listed = set(kust.get("resources", []))
want = set(by_file) - {"kustomization.yaml", "secret.yaml"}
check(listed == want, "kustomization lists every manifest but the placeholder Secret",
      "kustomization resources %s, want %s" % (sorted(listed), sorted(want)))

# -- compose.yaml and the HAProxy in front of it
comp = yaml.safe_load(read(os.path.join(dep, "compose.yaml")))
services = comp.get("services", {})
tb = {n: s for n, s in services.items() if str(s.get("image", "")).startswith("localhost/taskbus:")}
check(len(tb) == 3, "compose: 3 taskbus replicas (%s)" % ", ".join(sorted(tb)),
      "compose: %d services use the taskbus image, want 3" % len(tb))
check("redis" in services, "compose: a redis service", "compose: no redis service")
compose_env = set()
for n, s in tb.items():
    env = s.get("environment", {})
    compose_env |= set(env)
    check(str(env.get("TASKBUS_REDIS_URL", "")).startswith("redis://redis:"),
          "compose %s: Redis at the redis service" % n,
          "compose %s: TASKBUS_REDIS_URL %r" % (n, env.get("TASKBUS_REDIS_URL")))
    sgp = re.fullmatch(r"(\d+)s", str(s.get("stop_grace_period", "10s")))
    budget = int(env.get("TASKBUS_SHUTDOWN_DELAY", 0)) + int(env.get("TASKBUS_GRACEFUL_TIMEOUT", 15))
    check(sgp and int(sgp.group(1)) > budget,
          "compose %s: stop_grace_period %s > %d s" % (n, s.get("stop_grace_period"), budget),
          "compose %s: stop_grace_period %s not above the %d s taskbus may take" % (n, s.get("stop_grace_period"), budget))
cfg = read(os.path.join(dep, "lb", "haproxy.cfg"))
servers = re.findall(r"^\s*server\s+\S+\s+([\w.-]+):(\d+)", cfg, re.M)
check(sorted(h for h, _ in servers) == sorted(tb) and all(int(p) == PORT for _, p in servers),
      "haproxy.cfg: one server per replica, port %s" % PORT,
      "haproxy.cfg servers %s do not match the compose replicas %s" % (servers, sorted(tb)))
check(re.search(r"option httpchk GET /readyz", cfg),
      "haproxy.cfg checks /readyz", "haproxy.cfg does not check /readyz")
# Tokens stay out of the LB's log: no httplog (it logs the request line,
# query string included), a log-format without %r, %HU or %HQ, and no
# header captures.
lf = re.findall(r"^\s*log-format\s+(.*)$", cfg, re.M)
check(not re.search(r"^\s*option\s+httplog", cfg, re.M) and lf and
      not re.search(r"%(\{[^}]*\})?(r|HU|HQ)\b", lf[0]) and
      not re.search(r"^\s*(http-request\s+|http-response\s+)?capture\b", cfg, re.M),
      "haproxy.cfg logs no query string and no header (%s)" % (lf[0] if lf else ""),
      "haproxy.cfg may log query strings (?token=) or headers: %s" % lf)
# down: the replicas stop before HAProxy (compose stops dependents first),
# so their 1001 closes reach the clients, and HAProxy's hard stop is short.
lbs = services.get("lb", {})
check(all("lb" in (services[n].get("depends_on") or []) for n in tb) and
      not set(lbs.get("depends_on") or []) & set(tb),
      "compose: the replicas depend on lb (stopped before it)",
      "compose: the replicas must depend on lb and lb not on them (stop order)")
hsa = re.search(r"^\s*hard-stop-after\s+(\d+)s", cfg, re.M)
lb_grace = re.fullmatch(r"(\d+)s", str(lbs.get("stop_grace_period", "10s")))
check(hsa and lb_grace and int(hsa.group(1)) <= 10 and
      int(hsa.group(1)) < int(lb_grace.group(1)),
      "haproxy hard-stop-after %ss, under lb's stop_grace_period %s" %
      (hsa.group(1) if hsa else "?", lbs.get("stop_grace_period")),
      "haproxy hard-stop-after (%s) must be at most 10 s and below lb's "
      "stop_grace_period (%s)" % (hsa and hsa.group(1), lbs.get("stop_grace_period")))

# -- systemd unit and the env file example
unit = read(os.path.join(dep, "systemd", "taskbus.service"))
kv = {}
for l in unit.splitlines():
    if "=" in l and not l.lstrip().startswith(("#", ";", "[")):
        k, v = l.split("=", 1)
        kv.setdefault(k.strip(), []).append(v.strip())
for k, v in (("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"),
             ("Restart", "on-failure"), ("EnvironmentFile", "/etc/taskbus/taskbus.env")):
    check(v in kv.get(k, []), "unit: %s=%s" % (k, v), "unit: %s=%s missing" % (k, v))
check("yes" in kv.get("DynamicUser", []) or kv.get("User"), "unit: unprivileged user",
      "unit: neither DynamicUser=yes nor User=")
check(int(kv.get("LimitNOFILE", ["0"])[0]) >= 65536, "unit: LimitNOFILE %s" % kv.get("LimitNOFILE"),
      "unit: LimitNOFILE %s too low for websockets" % kv.get("LimitNOFILE"))
check(kv.get("ExecStart", [""])[0].startswith("/usr/local/bin/taskbus"),
      "unit: ExecStart /usr/local/bin/taskbus", "unit: ExecStart %s" % kv.get("ExecStart"))
envex = {}
for l in read(os.path.join(dep, "taskbus.env.example")).splitlines():
    if re.match(r"^[A-Z_][A-Z0-9_]*=", l):
        k, v = l.split("=", 1)
        envex[k] = v
stop = int(kv.get("TimeoutStopSec", ["90"])[0])
need = int(envex.get("TASKBUS_SHUTDOWN_DELAY", 0)) + int(envex.get("TASKBUS_GRACEFUL_TIMEOUT", 15))
check(stop > need, "unit: TimeoutStopSec %d > %d s" % (stop, need),
      "unit: TimeoutStopSec %d not above the %d s taskbus may take" % (stop, need))

# -- every setting the files give the service is one the service reads
unit_env = set()
for v in kv.get("Environment", []):
    unit_env |= {w.split("=", 1)[0] for w in v.split()}
given = {
    "k8s ConfigMap": set(cmdata),
    "k8s env": {e["name"] for e in ctr.get("env", [])},
    "compose": compose_env,
    "taskbus.env.example": set(envex),
    "Dockerfile": {k for k in docker_env if k.startswith("TASKBUS_")},
    "systemd unit": unit_env,
}
# What the service reads: README's settings table, which the service suite
# checks is exactly what `taskbus config --markdown` prints.
readme = read(os.path.join(src, "README.md"))
m = re.search(r"<!-- settings:begin -->(.*?)<!-- settings:end -->", readme, re.S)
known = set(re.findall(r"`(TASKBUS_[A-Z0-9_]+)`", m.group(1) if m else ""))
check(len(known) >= 40, "README's settings table lists %d variables" % len(known),
      "README's settings table lists only %d variables" % len(known))
for where, names in given.items():
    unknown = sorted(n for n in names if n not in known)
    check(not unknown, "%s: settings all read by the service (%d)" % (where, len(names)),
          "%s: %s not read by the service (not in README's settings table)" % (where, unknown))

sys.exit(1 if errors else 0)
PYEOF

# ---- deploy/podman-setup.sh: the packages and settings a bare host needs
setup=$SRC/deploy/podman-setup.sh
conf=$(bash "$setup" conf 2>&1) || {
    log "FAIL: podman-setup.sh conf: $conf"
    FAILED=1
}
for want in 'default_ulimits = \["nofile=' 'runtime = "runc"' \
    'cgroup_manager = "(cgroupfs|systemd)"' 'network_backend = "netavark"'; do
    if grep -Eq "^$want" <<<"$conf"; then
        log "ok: podman-setup.sh conf sets ${want//\\/}"
    else
        log "FAIL: podman-setup.sh conf does not set $want"
        FAILED=1
    fi
done
# The packages: what the script installs must include what netavark needs
# at run time, and CI's container tests (.ci/dev.sh CONTAINER_DEPS) must
# install nothing a deployment needs that the script leaves out, or the
# container test passes where a user's host fails (iptables once did).
mapfile -t setup_pkgs < <(bash "$setup" packages)
for pkg in podman netavark aardvark-dns runc iptables docker-compose; do
    if printf '%s\n' "${setup_pkgs[@]}" | grep -qx -- "$pkg"; then
        log "ok: podman-setup.sh installs $pkg"
    else
        log "FAIL: podman-setup.sh does not install $pkg"
        FAILED=1
    fi
done
# What only the tests need, and why: debootstrap (the setup script's `base`
# installs it itself), rootless podman's helpers (the test's own storage),
# python3-yaml (this script).
test_only=(debootstrap fuse-overlayfs slirp4netns uidmap python3-yaml)
ci_pkgs=$(sed -n '/^CONTAINER_DEPS=(/,/)/p' "$SRC/.ci/dev.sh" |
    sed -e 's/^CONTAINER_DEPS=(//' -e 's/)//' | tr -s ' \t' '\n' | grep .)
pkgs_ok=1
if [[ -z "$ci_pkgs" ]]; then
    log "FAIL: no CONTAINER_DEPS=(...) in .ci/dev.sh"
    pkgs_ok=0
fi
for pkg in $ci_pkgs; do
    if printf '%s\n' "${setup_pkgs[@]}" "${test_only[@]}" | grep -qx -- "$pkg"; then
        continue
    fi
    log "FAIL: .ci/dev.sh installs $pkg for the container tests but" \
        "deploy/podman-setup.sh does not (add it to PACKAGES, or to" \
        "test_only here if only the tests need it)"
    pkgs_ok=0
done
for pkg in "${setup_pkgs[@]}"; do
    if ! grep -qx -- "$pkg" <<<"$ci_pkgs"; then
        log "FAIL: deploy/podman-setup.sh installs $pkg but .ci/dev.sh's" \
            "CONTAINER_DEPS does not: the container tests do not try it"
        pkgs_ok=0
    fi
done
if ((pkgs_ok)); then
    log "ok: .ci/dev.sh CONTAINER_DEPS installs podman-setup.sh's" \
        "${#setup_pkgs[@]} packages and no other a deployment needs"
else
    FAILED=1
fi

# ---- docker-compose's own validation (the engine is not needed)
if command -v docker-compose >/dev/null 2>&1; then
    : >"$TMP/empty.env"
    DC=(docker-compose --env-file "$TMP/empty.env" -f "$SRC/deploy/compose.yaml")
    if out=$(env -u TASKBUS_TOKEN TASKBUS_TOKEN=ctest "${DC[@]}" config -q 2>&1); then
        log "ok: docker-compose config -q"
    else
        log "FAIL: docker-compose config -q: $out"
        FAILED=1
    fi
    if env -u TASKBUS_TOKEN "${DC[@]}" config -q >/dev/null 2>&1; then
        log "FAIL: compose starts without TASKBUS_TOKEN (it must insist on one)"
        FAILED=1
    else
        log "ok: docker-compose refuses to start without TASKBUS_TOKEN"
    fi
else
    log "docker-compose not installed: compose.yaml not validated by it"
fi

# ---- systemd's own parser. verify also wants ExecStart to exist: check a
# copy that starts /bin/true instead. Unknown keys are only warnings to it.
if command -v systemd-analyze >/dev/null 2>&1; then
    sed -e 's#^ExecStart=/usr/local/bin/taskbus#ExecStart=/bin/true#' \
        -e 's#^EnvironmentFile=#EnvironmentFile=-#' \
        "$SRC/deploy/systemd/taskbus.service" >"$TMP/taskbus.service"
    out=$(systemd-analyze verify "$TMP/taskbus.service" 2>&1)
    rc=$?
    out=$(grep -F "taskbus.service" <<<"$out")
    if ((rc == 0)) && [[ -z "$out" ]]; then
        log "ok: systemd-analyze verify taskbus.service"
    else
        log "FAIL: systemd-analyze verify taskbus.service (rc $rc): $out"
        FAILED=1
    fi
else
    log "systemd-analyze not installed: unit not verified by systemd"
fi

if ((FAILED)); then
    log "FAILED"
    exit 1
fi
log "all checks passed"
