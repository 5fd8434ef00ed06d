//! The deployment kit in `deploy/`: both Kustomize overlays render (`kubectl kustomize`) to a
//! hardened, probed, sized gateway whose grace period covers its drain (and, in cluster mode,
//! its handoff); the alert rules pass `promtool check rules`; every metric the rules and the
//! Grafana dashboard use is exported by the real binary from start-up, each family with a
//! `# HELP` line; the Dockerfile copies only what exists and names the binary this package
//! builds. `kubectl` and `promtool` come from Debian's `kubectl` and `prometheus` packages
//! (`scripts/test` installs them; `KUBECTL` and `PROMTOOL` name others).

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::process::*;
use common::*;
use fanout_gateway::config::Config;
use fanout_test_support::*;
use yaml_rust2::{Yaml, YamlLoader};

// ---------------------------------------------------------------------------------------
// Tools and files

/// Runs the tool named by `$var` (else `default`) in the repository's root.
fn run_tool(var: &str, default: &str, package: &str, args: &[&OsStr]) -> Output {
    let program = std::env::var_os(var).unwrap_or_else(|| default.into());
    Command::new(&program)
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run {} ({error}): install Debian's `{package}` package (scripts/test does) or set {var}",
                Path::new(&program).display()
            )
        })
}

fn read(path: &str) -> String {
    let path = repo_root().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

// ---------------------------------------------------------------------------------------
// Kubernetes objects

/// `kubectl kustomize deploy/kubernetes/overlays/{overlay}`, one document per object.
fn render(overlay: &str) -> Vec<Yaml> {
    let dir = repo_root().join("deploy/kubernetes/overlays").join(overlay);
    let output = run_tool(
        "KUBECTL",
        "kubectl",
        "kubectl",
        &[OsStr::new("kustomize"), dir.as_os_str()],
    );
    assert!(
        output.status.success(),
        "kubectl kustomize {overlay} failed:\n{}",
        output_text(&output)
    );
    let text = String::from_utf8(output.stdout).expect("kubectl prints UTF-8");
    let docs: Vec<Yaml> = YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("kubectl kustomize {overlay} printed invalid YAML: {e}"))
        .into_iter()
        .filter(|doc| doc.as_hash().is_some())
        .collect();
    assert!(!docs.is_empty(), "{overlay} rendered nothing");
    docs
}

/// YAML documents of a file of the repository.
fn load(path: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn kinds(docs: &[Yaml]) -> Vec<String> {
    docs.iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap_or("?"),
                d["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

fn objects<'a>(docs: &'a [Yaml], kind: &str) -> Vec<&'a Yaml> {
    docs.iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect()
}

fn object<'a>(docs: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name} among {:?}", kinds(docs)))
}

fn strs(value: &Yaml) -> Vec<&str> {
    value
        .as_vec()
        .map(|v| v.iter().filter_map(Yaml::as_str).collect())
        .unwrap_or_default()
}

/// Whether every label of `selector` (a non-empty map) is among `labels`.
fn selects(selector: &Yaml, labels: &Yaml) -> bool {
    selector.as_hash().is_some_and(|selector| {
        !selector.is_empty()
            && selector
                .iter()
                .all(|(k, v)| k.as_str().is_some_and(|k| labels[k] == *v))
    })
}

fn container<'a>(pod: &'a Yaml, name: &str) -> &'a Yaml {
    pod["containers"]
        .as_vec()
        .and_then(|c| c.iter().find(|c| c["name"].as_str() == Some(name)))
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env(container: &Yaml) -> BTreeMap<&str, &Yaml> {
    container["env"]
        .as_vec()
        .expect("the container has an env list")
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, e)))
        .collect()
}

fn env_value<'a>(env: &BTreeMap<&str, &'a Yaml>, name: &str) -> Option<&'a str> {
    env.get(name).copied().and_then(|e| e["value"].as_str())
}

/// A duration from the environment (`"5s"`), or `default` when it is not set.
fn env_duration(env: &BTreeMap<&str, &Yaml>, name: &str, default: Duration) -> Duration {
    env_value(env, name).map_or(default, |text| {
        humantime::parse_duration(text).unwrap_or_else(|e| panic!("{name}={text}: {e}"))
    })
}

fn probe<'a>(container: &'a Yaml, which: &str) -> (&'a str, &'a Yaml) {
    let get = &container[which]["httpGet"];
    let path = get["path"]
        .as_str()
        .unwrap_or_else(|| panic!("{which} is not an httpGet probe"));
    (path, &get["port"])
}

/// The checks both overlays share; answers the gateway's pod template.
fn check_gateway<'a>(docs: &'a [Yaml], overlay: &str, handoff: Duration) -> &'a Yaml {
    let deployment = object(docs, "Deployment", "fanout-gateway");
    let template = &deployment["spec"]["template"];
    let labels = &template["metadata"]["labels"];
    assert!(
        selects(&deployment["spec"]["selector"]["matchLabels"], labels),
        "{overlay}: the Deployment's selector does not select its pods"
    );
    let pod = &template["spec"];
    let gateway = container(pod, "gateway");

    // Security.
    let pod_security = &pod["securityContext"];
    let security = &gateway["securityContext"];
    let either = |key: &str| {
        if security[key].is_badvalue() {
            &pod_security[key]
        } else {
            &security[key]
        }
    };
    assert_eq!(
        either("runAsNonRoot").as_bool(),
        Some(true),
        "{overlay}: runAsNonRoot"
    );
    let user = either("runAsUser")
        .as_i64()
        .unwrap_or_else(|| panic!("{overlay}: runAsUser must be numeric"));
    assert!(user > 0, "{overlay}: runAsUser {user}");
    if let Some(group) = either("runAsGroup").as_i64() {
        assert!(group > 0, "{overlay}: runAsGroup {group}");
    }
    assert_eq!(
        security["readOnlyRootFilesystem"].as_bool(),
        Some(true),
        "{overlay}: readOnlyRootFilesystem"
    );
    assert_eq!(
        security["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "{overlay}: allowPrivilegeEscalation"
    );
    assert!(
        strs(&security["capabilities"]["drop"]).contains(&"ALL"),
        "{overlay}: capabilities must drop ALL"
    );
    // Unsafe sysctls would keep the pod off a default cluster: they are a commented example.
    assert!(
        pod_security["sysctls"].is_badvalue(),
        "{overlay}: sysctls must not be active"
    );

    // Ports and probes: both probes on the admin listener.
    let ports = gateway["ports"].as_vec().expect("container ports");
    let port = |name: &str| {
        ports
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_i64())
            .unwrap_or_else(|| panic!("{overlay}: no container port {name}"))
    };
    let admin_port = port("admin");
    let ws_port = port("ws");
    let vars = env(gateway);
    for (var, port) in [
        ("FANOUT_LISTEN", ws_port),
        ("FANOUT_ADMIN_LISTEN", admin_port),
    ] {
        let addr: SocketAddr = env_value(&vars, var)
            .unwrap_or_else(|| panic!("{overlay}: {var} not set"))
            .parse()
            .unwrap_or_else(|e| panic!("{overlay}: {var}: {e}"));
        assert_eq!(i64::from(addr.port()), port, "{overlay}: {var}");
        assert!(
            addr.ip().is_unspecified(),
            "{overlay}: {var} must listen on every address"
        );
    }
    assert_eq!(env_value(&vars, "FANOUT_LOG_FORMAT"), Some("json"));
    for (which, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let (probe_path, probe_port) = probe(gateway, which);
        assert_eq!(probe_path, path, "{overlay}: {which}");
        assert!(
            probe_port.as_str() == Some("admin") || probe_port.as_i64() == Some(admin_port),
            "{overlay}: {which} must probe the admin port, not {probe_port:?}"
        );
    }

    // Secrets through secretKeyRef, never as values.
    for (var, key) in [
        ("FANOUT_JWT_SECRET", "jwt-secret"),
        ("FANOUT_UPSTREAM_TOKEN", "upstream-token"),
        ("FANOUT_ADMIN__TOKEN", "admin-token"),
    ] {
        let entry = vars
            .get(var)
            .unwrap_or_else(|| panic!("{overlay}: {var} not set"));
        let reference = &entry["valueFrom"]["secretKeyRef"];
        assert_eq!(
            (reference["name"].as_str(), reference["key"].as_str()),
            (Some("fanout-gateway"), Some(key)),
            "{overlay}: {var} must come from the Secret"
        );
    }

    // Resources.
    for side in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                !gateway["resources"][side][resource].is_badvalue(),
                "{overlay}: resources.{side}.{resource} not set"
            );
        }
    }

    // The grace period covers the drain (and the handoff).
    let defaults = Config::default();
    let ready_delay = env_duration(
        &vars,
        "FANOUT_SHUTDOWN__READY_DELAY",
        defaults.shutdown.ready_delay,
    );
    let drain = env_duration(
        &vars,
        "FANOUT_SHUTDOWN__DRAIN_TIMEOUT",
        defaults.shutdown.drain_timeout,
    );
    let grace = pod["terminationGracePeriodSeconds"]
        .as_i64()
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
        .unwrap_or_else(|| panic!("{overlay}: terminationGracePeriodSeconds not set"));
    assert!(
        grace > ready_delay + drain + handoff,
        "{overlay}: terminationGracePeriodSeconds {grace:?} must exceed ready_delay {ready_delay:?} + drain_timeout {drain:?} + handoff {handoff:?}"
    );

    // The Services: WebSockets (without the admin port) and the admin port.
    let services = objects(docs, "Service");
    let pods_services: Vec<&Yaml> = services
        .iter()
        .copied()
        .filter(|s| selects(&s["spec"]["selector"], labels))
        .collect();
    let has_port = |service: &Yaml, wanted: &str, number: i64| {
        service["spec"]["ports"].as_vec().is_some_and(|ports| {
            ports.iter().any(|p| {
                p["name"].as_str() == Some(wanted)
                    || p["targetPort"].as_str() == Some(wanted)
                    || p["targetPort"].as_i64() == Some(number)
            })
        })
    };
    let websocket = pods_services
        .iter()
        .find(|s| has_port(s, "ws", ws_port))
        .unwrap_or_else(|| panic!("{overlay}: no Service of the gateway's ws port"));
    assert!(
        !has_port(websocket, "admin", admin_port),
        "{overlay}: the WebSocket Service must not expose the admin port"
    );
    let admin = pods_services
        .iter()
        .find(|s| {
            s["spec"]["ports"]
                .as_vec()
                .is_some_and(|ports| ports.iter().any(|p| p["name"].as_str() == Some("admin")))
        })
        .unwrap_or_else(|| panic!("{overlay}: no Service with a port named admin"));

    // Prometheus Operator's ServiceMonitor scrapes that port.
    let monitor = objects(docs, "ServiceMonitor");
    let monitor = monitor
        .first()
        .unwrap_or_else(|| panic!("{overlay}: no ServiceMonitor"));
    assert_eq!(
        monitor["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    assert!(
        selects(
            &monitor["spec"]["selector"]["matchLabels"],
            &admin["metadata"]["labels"]
        ),
        "{overlay}: the ServiceMonitor does not select the admin Service"
    );
    assert!(
        monitor["spec"]["endpoints"]
            .as_vec()
            .is_some_and(|e| e.iter().any(|e| {
                e["port"].as_str() == Some("admin") && e["path"].as_str() == Some("/metrics")
            })),
        "{overlay}: the ServiceMonitor must scrape port admin at /metrics"
    );

    // Disruptions and autoscaling.
    let pdb = object(docs, "PodDisruptionBudget", "fanout-gateway");
    assert_eq!(pdb["apiVersion"].as_str(), Some("policy/v1"));
    assert_eq!(
        pdb["spec"]["maxUnavailable"].as_i64(),
        Some(1),
        "{overlay}: PDB"
    );
    assert!(
        selects(&pdb["spec"]["selector"]["matchLabels"], labels),
        "{overlay}: the PodDisruptionBudget does not select the gateway's pods"
    );
    let hpa = object(docs, "HorizontalPodAutoscaler", "fanout-gateway");
    assert_eq!(hpa["apiVersion"].as_str(), Some("autoscaling/v2"));
    assert_eq!(
        (
            hpa["spec"]["scaleTargetRef"]["kind"].as_str(),
            hpa["spec"]["scaleTargetRef"]["name"].as_str()
        ),
        (Some("Deployment"), Some("fanout-gateway"))
    );
    let on_cpu = hpa["spec"]["metrics"].as_vec().is_some_and(|metrics| {
        metrics.iter().any(|m| {
            m["type"].as_str() == Some("Resource")
                && m["resource"]["name"].as_str() == Some("cpu")
                && m["resource"]["target"]["averageUtilization"]
                    .as_i64()
                    .is_some_and(|u| (50..=80).contains(&u))
        })
    });
    assert!(on_cpu, "{overlay}: the HPA must scale on CPU utilisation");
    let min = hpa["spec"]["minReplicas"].as_i64().unwrap_or(1);
    assert!(min >= 2, "{overlay}: HPA minReplicas {min}");

    // The examples stay examples: the Secret is made with kubectl, the Ingress is yours.
    for kind in ["Secret", "Ingress"] {
        assert!(
            objects(docs, kind).is_empty(),
            "{overlay}: a {kind} is rendered; it must stay an example"
        );
    }
    pod
}

#[test]
fn single_overlay_renders_a_hardened_gateway() {
    let docs = render("single");
    let pod = check_gateway(&docs, "single", Duration::ZERO);
    let vars = env(container(pod, "gateway"));
    assert!(
        !vars.contains_key("FANOUT_CLUSTER__NATS_URL"),
        "single: independent nodes need no NATS"
    );
    assert!(objects(&docs, "StatefulSet").is_empty());
    let replicas = object(&docs, "Deployment", "fanout-gateway")["spec"]["replicas"]
        .as_i64()
        .expect("replicas");
    assert!(replicas >= 2, "single: {replicas} replicas");
}

#[test]
fn cluster_overlay_adds_nats_and_time_to_hand_over() {
    let docs = render("cluster");
    let defaults = Config::default();
    // Everything the base holds, with its grace period covering the handoff too.
    let pod = {
        let deployment = object(&docs, "Deployment", "fanout-gateway");
        let vars = env(container(
            &deployment["spec"]["template"]["spec"],
            "gateway",
        ));
        let request_timeout = env_duration(
            &vars,
            "FANOUT_CLUSTER__REQUEST_TIMEOUT",
            defaults.cluster.request_timeout,
        );
        // Draining the publisher, the term's end and the release: a request each.
        check_gateway(
            &docs,
            "cluster",
            request_timeout * 3 + Duration::from_secs(1),
        )
    };
    let gateway = container(pod, "gateway");
    let vars = env(gateway);
    let url = env_value(&vars, "FANOUT_CLUSTER__NATS_URL")
        .expect("cluster: FANOUT_CLUSTER__NATS_URL set");
    // Every server, over TLS, with the gateway's user; the password from a Secret.
    let servers: Vec<&str> = url.split(',').collect();
    assert_eq!(servers.len(), 3, "cluster: every NATS server in {url}");
    let hosts: BTreeSet<&str> = servers
        .iter()
        .map(|server| {
            let rest = server
                .strip_prefix("tls://")
                .unwrap_or_else(|| panic!("cluster: {server} is not tls://"));
            let (user, host) = rest.split_once('@').expect("credentials in the URL");
            assert_eq!(
                user, "fanout:$(NATS_PASSWORD)",
                "cluster: the gateway's user"
            );
            host.split(':').next().expect("a host")
        })
        .collect();
    let password = vars
        .get("NATS_PASSWORD")
        .expect("cluster: NATS_PASSWORD set");
    assert!(
        !password["valueFrom"]["secretKeyRef"].is_badvalue(),
        "cluster: the NATS password must come from a Secret"
    );
    let fleet_key = vars
        .get("FANOUT_CLUSTER__FLEET_KEY")
        .expect("cluster: FANOUT_CLUSTER__FLEET_KEY set");
    assert!(
        !fleet_key["valueFrom"]["secretKeyRef"].is_badvalue(),
        "cluster: the fleet key must come from a Secret"
    );
    assert_eq!(env_value(&vars, "FANOUT_CLUSTER__REPLICAS"), Some("3"));
    let ca = env_value(&vars, "FANOUT_CLUSTER__CA_FILE").expect("cluster: a CA for NATS");
    let mounts = gateway["volumeMounts"]
        .as_vec()
        .cloned()
        .unwrap_or_default();
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"].as_str().is_some_and(|p| ca.starts_with(p))),
        "cluster: {ca} is not mounted"
    );
    let host = hosts
        .iter()
        .next()
        .and_then(|h| h.split('.').nth(1))
        .expect("cluster: hosts of a headless Service");
    let node_id = vars
        .get("FANOUT_CLUSTER__NODE_ID")
        .expect("cluster: FANOUT_CLUSTER__NODE_ID set");
    assert_eq!(
        node_id["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("metadata.name"),
        "cluster: the node id must be the pod's name"
    );
    let replicas = object(&docs, "Deployment", "fanout-gateway")["spec"]["replicas"]
        .as_i64()
        .expect("replicas");
    assert!(replicas >= 3, "cluster: {replicas} replicas");

    // NATS ≥ 2.11 with JetStream on a persistent volume, behind the URL's Service.
    let nats = objects(&docs, "StatefulSet")
        .into_iter()
        .find(|s| {
            s["spec"]["template"]["spec"]["containers"]
                .as_vec()
                .is_some_and(|c| {
                    c.iter().any(|c| {
                        c["image"]
                            .as_str()
                            .is_some_and(|i| i.starts_with("nats:") || i.contains("/nats:"))
                    })
                })
        })
        .unwrap_or_else(|| panic!("cluster: no NATS StatefulSet among {:?}", kinds(&docs)));
    let server = &nats["spec"]["template"]["spec"]["containers"][0];
    let image = server["image"].as_str().expect("image");
    let tag = image.rsplit(':').next().unwrap_or_default();
    assert!(
        fanout_cluster::server_supported(tag),
        "cluster: {image} is older than NATS 2.11 (or untagged)"
    );
    let args = strs(&server["args"]);
    let command = strs(&server["command"]);
    assert!(
        args.iter()
            .chain(command.iter())
            .any(|a| matches!(*a, "-js" | "--jetstream" | "--js")),
        "cluster: NATS must run with JetStream ({args:?})"
    );
    let claims: Vec<&str> = nats["spec"]["volumeClaimTemplates"]
        .as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|c| c["metadata"]["name"].as_str())
                .collect()
        })
        .unwrap_or_default();
    let mounts = server["volumeMounts"].as_vec().cloned().unwrap_or_default();
    let store = mounts
        .iter()
        .find(|m| m["name"].as_str().is_some_and(|n| claims.contains(&n)))
        .and_then(|m| m["mountPath"].as_str())
        .unwrap_or_else(|| panic!("cluster: JetStream's store is not on a volume claim"));
    assert!(
        args.iter().any(|a| a
            .strip_prefix("--store_dir=")
            .or_else(|| a.strip_prefix("-sd="))
            .is_some_and(|dir| dir.starts_with(store))),
        "cluster: JetStream's store_dir must be under {store} ({args:?})"
    );
    let service = object(&docs, "Service", host);
    assert!(
        selects(
            &service["spec"]["selector"],
            &nats["spec"]["template"]["metadata"]["labels"]
        ),
        "cluster: Service {host} does not select the NATS pods"
    );
    assert!(
        service["spec"]["ports"]
            .as_vec()
            .is_some_and(|p| p.iter().any(|p| p["port"].as_i64() == Some(4222))),
        "cluster: Service {host} has no port 4222"
    );
    assert_eq!(
        nats["spec"]["replicas"].as_i64(),
        Some(3),
        "cluster: three NATS servers"
    );
    // Its configuration: TLS, the gateway's user and nothing else.
    // The ConfigMap the servers mount (kustomize adds a hash to its name).
    let config_name = nats["spec"]["template"]["spec"]["volumes"]
        .as_vec()
        .and_then(|v| v.iter().find_map(|v| v["configMap"]["name"].as_str()))
        .expect("cluster: NATS mounts a ConfigMap");
    let config = object(&docs, "ConfigMap", config_name);
    let conf = config["data"]["nats.conf"].as_str().expect("nats.conf");
    let auth = config["data"]["nats-auth.conf"]
        .as_str()
        .expect("nats-auth.conf");
    assert!(conf.contains("tls {") && conf.contains("include ./nats-auth.conf"));
    assert!(auth.contains("user: fanout") && auth.contains("permissions"));
    assert!(
        args.iter()
            .any(|a| a.starts_with("--config=/etc/nats/config/")),
        "cluster: NATS must read its configuration ({args:?})"
    );
    // Only the gateway's pods reach the clients' port.
    let policy = objects(&docs, "NetworkPolicy")
        .into_iter()
        .find(|p| {
            selects(
                &p["spec"]["podSelector"]["matchLabels"],
                &nats["spec"]["template"]["metadata"]["labels"],
            )
        })
        .unwrap_or_else(|| {
            panic!(
                "cluster: no NetworkPolicy for NATS among {:?}",
                kinds(&docs)
            )
        });
    let gateway_labels =
        &object(&docs, "Deployment", "fanout-gateway")["spec"]["template"]["metadata"]["labels"];
    let rules = policy["spec"]["ingress"].as_vec().expect("ingress rules");
    for rule in rules {
        let ports: Vec<i64> = rule["ports"]
            .as_vec()
            .map(|p| p.iter().filter_map(|p| p["port"].as_i64()).collect())
            .unwrap_or_default();
        if ports.contains(&4222) {
            let from = rule["from"].as_vec().expect("from");
            assert!(
                from.iter()
                    .all(|f| !f["podSelector"]["matchLabels"].is_badvalue()
                        && selects(&f["podSelector"]["matchLabels"], gateway_labels)),
                "cluster: port 4222 admits more than the gateway's pods"
            );
        }
    }
    assert!(
        rules.iter().any(|r| r["ports"]
            .as_vec()
            .is_some_and(|p| p.iter().any(|p| p["port"].as_i64() == Some(4222)))),
        "cluster: the NetworkPolicy says nothing of port 4222"
    );
    // nats-server itself takes the configuration, with a certificate and the passwords.
    let dir = std::env::temp_dir().join(format!("fanout-nats-conf-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let ca = pki::Ca::new("nats-ca");
    let cert = ca.server("nats", &["nats", "nats-0.nats"], pki::Validity::Current);
    let conf = conf
        .replace("/etc/nats/tls/tls.crt", &cert.cert.display().to_string())
        .replace("/etc/nats/tls/tls.key", &cert.key.display().to_string())
        .replace(
            "/etc/nats/tls/ca.crt",
            &ca.cert_path().display().to_string(),
        );
    std::fs::write(dir.join("nats.conf"), conf).expect("write");
    std::fs::write(dir.join("nats-auth.conf"), auth).expect("write");
    let checked = Command::new(fanout_test_support::nats::nats_server())
        .arg("-t")
        .arg("-c")
        .arg(dir.join("nats.conf"))
        .env("NATS_PASSWORD", "p")
        .env("NATS_ROUTE_PASSWORD", "r")
        .output()
        .expect("nats-server runs");
    assert!(
        checked.status.success(),
        "nats-server -t: {}",
        output_text(&checked)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn secret_and_ingress_examples_are_complete() {
    let secret = load("deploy/kubernetes/base/secret.example.yaml");
    let secret = object(&secret, "Secret", "fanout-gateway");
    for key in ["jwt-secret", "upstream-token", "admin-token"] {
        assert!(
            !secret["stringData"][key].is_badvalue() || !secret["data"][key].is_badvalue(),
            "the Secret example has no {key}"
        );
    }
    assert!(
        read("deploy/kubernetes/base/secret.example.yaml").contains("kubectl create secret"),
        "the Secret example must say how to create it"
    );
    let ingress = load("deploy/kubernetes/base/ingress.example.yaml");
    let ingress = objects(&ingress, "Ingress");
    let ingress = ingress.first().expect("an Ingress example");
    let annotations = &ingress["metadata"]["annotations"];
    for timeout in [
        "nginx.ingress.kubernetes.io/proxy-read-timeout",
        "nginx.ingress.kubernetes.io/proxy-send-timeout",
    ] {
        let seconds: u64 = annotations[timeout]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("the Ingress example has no {timeout}"));
        assert!(seconds >= 3600, "{timeout}: {seconds}");
    }
    assert!(
        annotations.as_hash().is_some_and(|a| a.keys().any(|k| k
            .as_str()
            .is_some_and(|k| k.starts_with("cert-manager.io/")))),
        "the Ingress example has no cert-manager annotation"
    );
    assert!(
        ingress["spec"]["tls"]
            .as_vec()
            .is_some_and(
                |tls| tls.iter().all(|t| t["secretName"].as_str().is_some()) && !tls.is_empty()
            ),
        "the Ingress example has no TLS secret"
    );
    let base = read("deploy/kubernetes/base/kustomization.yaml");
    let base = YamlLoader::load_from_str(&base).expect("YAML");
    let resources = strs(&base[0]["resources"]);
    for example in ["secret.example.yaml", "ingress.example.yaml"] {
        assert!(
            !resources.contains(&example),
            "{example} must not be among the base's resources"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Alert rules, the dashboard and the exported metrics

#[test]
fn alert_rules_pass_promtool_and_say_what_to_do() {
    let output = run_tool(
        "PROMTOOL",
        "promtool",
        "prometheus",
        &[
            OsStr::new("check"),
            OsStr::new("rules"),
            OsStr::new("deploy/prometheus/alerts.yaml"),
        ],
    );
    assert!(
        output.status.success(),
        "promtool check rules failed:\n{}",
        output_text(&output)
    );
    let rules = load("deploy/prometheus/alerts.yaml");
    let mut alerts = BTreeSet::new();
    for group in rules[0]["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            let Some(alert) = rule["alert"].as_str() else {
                continue;
            };
            for annotation in ["summary", "description"] {
                assert!(
                    rule["annotations"][annotation]
                        .as_str()
                        .is_some_and(|s| !s.trim().is_empty()),
                    "alert {alert} has no {annotation}"
                );
            }
            alerts.insert(alert);
        }
    }
    // What docs/operations.md explains, alert by alert.
    let operations = read("docs/operations.md");
    for alert in &alerts {
        assert!(
            operations.contains(&format!("`{alert}`")),
            "docs/operations.md does not explain {alert}"
        );
    }
    assert!(alerts.len() >= 10, "only {} alerts", alerts.len());
}

#[test]
fn dashboard_queries_a_prometheus_data_source_variable() {
    let text = read("deploy/grafana/fanout-gateway.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating variables");
    let datasource = variables
        .iter()
        .find(|v| v["type"] == "datasource" && v["query"] == "prometheus")
        .expect("a Prometheus data source variable");
    let variable = format!("${{{}}}", datasource["name"].as_str().expect("its name"));
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut queries = 0;
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap_or("?");
        assert_eq!(
            panel["datasource"]["uid"].as_str(),
            Some(variable.as_str()),
            "panel {title} must use the data source variable"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for target in targets {
            assert!(
                target["expr"].as_str().is_some_and(|e| !e.is_empty()),
                "panel {title} has an empty query"
            );
            queries += 1;
        }
    }
    assert!(queries >= 20, "only {queries} queries");
}

/// What a `/metrics` page exports: each family's type and help, and every sample's name.
#[derive(Default, Debug)]
struct Exported {
    types: BTreeMap<String, String>,
    helps: BTreeSet<String>,
    samples: BTreeSet<String>,
}

impl Exported {
    fn parse(text: &str) -> Exported {
        let mut exported = Exported::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.split_whitespace();
                match (words.next(), words.next(), words.next()) {
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        exported.types.insert(name.to_owned(), kind.to_owned());
                    }
                    (Some("HELP"), Some(name), _) => {
                        exported.helps.insert(name.to_owned());
                    }
                    _ => {}
                }
            } else if let Some(sample) = words.next() {
                let name = sample.split('{').next().unwrap_or(sample);
                exported.samples.insert(name.to_owned());
            }
        }
        exported
    }

    /// The family a metric name belongs to: itself, or the histogram (summary) whose
    /// `_bucket`, `_sum` or `_count` series it names.
    fn family<'a>(&self, name: &'a str) -> &'a str {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix)
                && self
                    .types
                    .get(base)
                    .is_some_and(|kind| kind == "histogram" || kind == "summary")
            {
                return base;
            }
        }
        name
    }

    fn has(&self, name: &str) -> bool {
        self.types.contains_key(self.family(name)) || self.samples.contains(name)
    }
}

/// Every `fanout_*` and `process_*` identifier in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts = (i == 0 || !ident(bytes[i - 1]))
            && (bytes[i..].starts_with(b"fanout_") || bytes[i..].starts_with(b"process_"));
        if starts {
            let end = bytes[i..]
                .iter()
                .position(|&b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
                .map_or(bytes.len(), |n| i + n);
            names.insert(text[i..end].to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

#[tokio::test]
async fn rules_and_dashboard_use_only_metrics_the_gateway_exports() {
    let (sim, _cancel) = start_sim(World::Voipbin, |_| {}).await;
    let gateway = spawn_gateway(sim.local_addr(), &[]).await;
    // Before any session or event: what rules and panels see on a fresh node.
    let text = metrics_text(gateway.admin).await;
    let exported = Exported::parse(&text);
    assert!(!exported.types.is_empty(), "no metric families in:\n{text}");
    let families: BTreeSet<&str> = exported
        .types
        .keys()
        .map(String::as_str)
        .chain(exported.samples.iter().map(|s| exported.family(s)))
        .collect();
    let without_help: Vec<&&str> = families
        .iter()
        .filter(|f| !exported.helps.contains(**f))
        .collect();
    assert!(
        without_help.is_empty(),
        "metric families without a # HELP line: {without_help:?}"
    );
    for file in [
        "deploy/prometheus/alerts.yaml",
        "deploy/grafana/fanout-gateway.json",
    ] {
        let used = metric_names(&read(file));
        assert!(
            !used.is_empty(),
            "{file} uses no fanout_ or process_ metric"
        );
        let missing: Vec<&String> = used.iter().filter(|n| !exported.has(n)).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics the gateway does not export at start-up: {missing:?}\nexported: {families:?}"
        );
    }
}

#[test]
fn metric_names_are_found_whole() {
    let names = metric_names(
        "rate(fanout_fanout_seconds_bucket{x=\"y\"}[5m]) / process_open_fds > 0 # subprocess_x my_fanout_y",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["fanout_fanout_seconds_bucket", "process_open_fds"]
    );
    let exported = Exported::parse(
        "# HELP fanout_fanout_seconds h\n# TYPE fanout_fanout_seconds histogram\nfanout_fanout_seconds_bucket{le=\"1\"} 0\nfanout_fanout_seconds_sum 0\nfanout_fanout_seconds_count 0\n",
    );
    assert!(exported.has("fanout_fanout_seconds_bucket"));
    assert!(exported.has("fanout_fanout_seconds"));
    assert!(!exported.has("fanout_fanout_seconds_total"));
}

// ---------------------------------------------------------------------------------------
// The container image

/// The Dockerfile's instructions: (keyword in upper case, the rest), continuation lines
/// joined, comments left out.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(continued) = trimmed.strip_suffix('\\') {
            current.push_str(continued);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, rest) = current
            .split_once(char::is_whitespace)
            .unwrap_or((current.as_str(), ""));
        out.push((keyword.to_ascii_uppercase(), rest.trim().to_owned()));
        current.clear();
    }
    out
}

/// A COPY's flags, sources and destination (shell or JSON form).
fn copy_args(rest: &str) -> (Vec<String>, Vec<String>, String) {
    let words: Vec<String> = rest.split_whitespace().map(str::to_owned).collect();
    let (flags, paths): (Vec<String>, Vec<String>) =
        words.into_iter().partition(|w| w.starts_with("--"));
    let joined = paths.join(" ");
    let mut paths = if joined.starts_with('[') {
        serde_json::from_str::<Vec<String>>(&joined).expect("COPY's JSON form")
    } else {
        paths
    };
    let dest = paths.pop().expect("COPY has a destination");
    (flags, paths, dest)
}

/// `.dockerignore`'s rules in order: (negated, the pattern's components).
fn ignore_rules(text: &str) -> Vec<(bool, Vec<String>)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (negated, pattern) = match l.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, l),
            };
            let pattern = pattern.trim_start_matches("./").trim_matches('/');
            (
                negated,
                pattern
                    .split('/')
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect(),
            )
        })
        .collect()
}

/// One path component against a pattern with `*` and `?`.
fn component_matches(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            component_matches(&pattern[1..], name)
                || (!name.is_empty() && component_matches(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => component_matches(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) => p == n && component_matches(&pattern[1..], &name[1..]),
        _ => false,
    }
}

fn glob_matches(pattern: &[String], path: &[&str]) -> bool {
    match (pattern.first(), path.first()) {
        (None, None) => true,
        (Some(p), _) if p == "**" => {
            glob_matches(&pattern[1..], path)
                || (!path.is_empty() && glob_matches(pattern, &path[1..]))
        }
        (Some(p), Some(n)) => {
            component_matches(p.as_bytes(), n.as_bytes()) && glob_matches(&pattern[1..], &path[1..])
        }
        _ => false,
    }
}

/// Whether `.dockerignore` keeps `path` (relative to the root) out of the build context:
/// the last rule that matches it or a directory above it decides.
fn ignored(rules: &[(bool, Vec<String>)], path: &str) -> bool {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut excluded = false;
    for (negated, pattern) in rules {
        if (1..=components.len()).any(|n| glob_matches(pattern, &components[..n])) {
            excluded = !negated;
        }
    }
    excluded
}

/// Files of `dir` the build reads: manifests and Rust sources, and what they include.
fn build_inputs(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && name != "node_modules" {
                build_inputs(&path, found);
            }
            continue;
        }
        let is_rust = path.extension().is_some_and(|e| e == "rs");
        if name == "Cargo.toml" || is_rust {
            found.push(path.clone());
        }
        if is_rust {
            let source = std::fs::read_to_string(&path).unwrap_or_default();
            for macro_name in ["include_str!(\"", "include_bytes!(\""] {
                for (at, _) in source.match_indices(macro_name) {
                    let literal = &source[at + macro_name.len()..];
                    let Some(end) = literal.find('"') else {
                        continue;
                    };
                    let included = path
                        .parent()
                        .expect("a file's directory")
                        .join(&literal[..end]);
                    if let Ok(included) = included.canonicalize() {
                        found.push(included);
                    }
                }
            }
        }
    }
}

#[test]
fn dockerfile_copies_what_exists_and_runs_the_built_binary_as_a_numeric_user() {
    let root = repo_root();
    let steps = instructions(&read("deploy/Dockerfile"));
    let stages: Vec<usize> = steps
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, _)| i)
        .collect();
    let last_stage = *stages.last().expect("a FROM");
    assert!(stages.len() >= 2, "a multi-stage build");

    // What the build copies from the context exists.
    let mut sources = Vec::new();
    for (keyword, rest) in &steps {
        if keyword != "COPY" && keyword != "ADD" {
            continue;
        }
        let (flags, paths, _) = copy_args(rest);
        if flags.iter().any(|f| f.starts_with("--from")) {
            continue;
        }
        for source in paths {
            assert!(
                !source.contains(['*', '?']),
                "COPY {source}: name paths, the test checks them"
            );
            let source = source
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_owned();
            assert!(
                root.join(&source).exists(),
                "the Dockerfile copies {source}, which does not exist"
            );
            sources.push(source);
        }
    }
    assert!(!sources.is_empty(), "the Dockerfile copies nothing");
    let copied = |path: &str| {
        sources
            .iter()
            .any(|s| s == "." || path == s || path.starts_with(&format!("{s}/")))
    };
    for file in ["Cargo.toml", "Cargo.lock"] {
        assert!(copied(file), "the build must copy {file}");
    }

    // Every workspace member is copied (cargo loads them all), with everything its build
    // reads, and nothing of it is kept out by .dockerignore.
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml");
    let members: Vec<&str> = manifest["workspace"]["members"]
        .as_array()
        .expect("workspace members")
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    let rules = ignore_rules(&read(".dockerignore"));
    let mut inputs = Vec::new();
    for member in &members {
        assert!(
            copied(member),
            "the Dockerfile does not copy the workspace member {member}"
        );
        build_inputs(&root.join(member), &mut inputs);
    }
    for file in ["Cargo.toml", "Cargo.lock", "rust-toolchain.toml"] {
        inputs.push(root.join(file));
    }
    assert!(inputs.len() > members.len(), "no build inputs found");
    for input in &inputs {
        let relative = input
            .strip_prefix(&root)
            .unwrap_or_else(|_| panic!("{} is outside the repository", input.display()))
            .to_string_lossy()
            .into_owned();
        if relative == "rust-toolchain.toml" && !copied(&relative) {
            continue;
        }
        assert!(
            copied(&relative),
            "the build reads {relative}, which the Dockerfile does not copy"
        );
        assert!(
            !ignored(&rules, &relative),
            ".dockerignore keeps {relative} out of the build context"
        );
    }
    for source in &sources {
        assert!(
            !ignored(&rules, source),
            ".dockerignore excludes {source}, which the build copies"
        );
    }
    for noise in ["target", ".git", "loadtest/results"] {
        assert!(
            ignored(&rules, noise),
            ".dockerignore should exclude {noise}"
        );
    }

    // The build stage builds this package's binary.
    let gateway_manifest: toml::Table = read("crates/gateway/Cargo.toml")
        .parse()
        .expect("crates/gateway/Cargo.toml");
    let package = gateway_manifest["package"]["name"]
        .as_str()
        .expect("package name");
    let bins: Vec<&str> = gateway_manifest
        .get("bin")
        .and_then(|b| b.as_array())
        .map(|bins| {
            bins.iter()
                .filter_map(|b| b.get("name").and_then(|n| n.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let build = steps[..last_stage]
        .iter()
        .filter(|(k, _)| k == "RUN")
        .map(|(_, rest)| rest.as_str())
        .find(|run| run.contains("cargo build"))
        .expect("a RUN with cargo build before the final stage");
    assert!(
        build.contains(&format!("-p {package}"))
            && build.contains("--release")
            && build.contains("--locked"),
        "the build must be `cargo build --release --locked -p {package}`: {build}"
    );

    // The final stage: the binary at the entrypoint, a numeric user, no HEALTHCHECK.
    let last = &steps[last_stage + 1..];
    let entrypoint = last
        .iter()
        .rev()
        .find(|(k, _)| k == "ENTRYPOINT")
        .map(|(_, rest)| {
            serde_json::from_str::<Vec<String>>(rest).expect("ENTRYPOINT in JSON form")
        })
        .expect("an ENTRYPOINT in the final stage");
    let program = entrypoint.first().expect("a program");
    let binary = Path::new(program)
        .file_name()
        .and_then(OsStr::to_str)
        .expect("the entrypoint names a file");
    assert!(
        bins.contains(&binary),
        "the entrypoint runs {binary}, not a [[bin]] of crates/gateway ({bins:?})"
    );
    assert!(
        build.contains(&format!("target/release/{binary}")),
        "the build stage does not take target/release/{binary}: {build}"
    );
    assert_eq!(
        Path::new(BIN).file_name().and_then(OsStr::to_str),
        Some(binary),
        "the test's binary is {BIN}"
    );
    assert!(Path::new(BIN).exists(), "{BIN} was not built");
    assert_eq!(entrypoint.get(1).map(String::as_str), Some("serve"));
    assert!(
        last.iter().any(|(k, rest)| k == "COPY"
            && copy_args(rest).2 == *program
            && copy_args(rest).0.iter().any(|f| f.starts_with("--from"))),
        "the final stage does not copy the built binary to {program}"
    );
    let user = last
        .iter()
        .rev()
        .find(|(k, _)| k == "USER")
        .map(|(_, rest)| rest.as_str())
        .expect("a USER in the final stage");
    let mut ids = user.split(':');
    let uid: u32 = ids
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("USER {user} must be numeric"));
    assert!(uid != 0, "USER {user} is root");
    if let Some(gid) = ids.next() {
        assert!(
            gid.parse::<u32>().is_ok(),
            "USER {user}: the group must be numeric"
        );
    }
    assert!(
        !last.iter().any(|(k, _)| k == "HEALTHCHECK"),
        "no HEALTHCHECK: Kubernetes probes /healthz and /readyz"
    );
    for port in ["8080", "9090"] {
        assert!(
            last.iter()
                .any(|(k, rest)| k == "EXPOSE" && rest.split_whitespace().any(|p| p == port)),
            "the image does not EXPOSE {port}"
        );
    }
}
