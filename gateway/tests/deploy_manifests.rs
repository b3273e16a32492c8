//! Static checks of the deploy manifests against the real binaries: every YAML parses; every
//! flag and `RINGCAST_*` variable compose and Kubernetes pass is one the binary reads and accepts
//! (`--check-config`); drain timings fit the grace periods; ports agree across files. Kubernetes
//! is checked as `kubectl kustomize` renders the base and every overlay; compose, in every
//! `docker-compose*.yml` (the stack and its Redis Cluster variant).

mod support;

use std::collections::BTreeSet;

use serde_norway::Value;
use support::manifests::{self, Bin, Launch};

/// Every compose file's launches, then every k8s rendering's.
fn all_launches() -> Vec<Vec<Launch>> {
    let compose = manifests::compose_files()
        .into_iter()
        .map(|f| manifests::compose_launches_of(&f));
    let k8s = manifests::k8s_renderings()
        .into_iter()
        .map(|(name, docs)| manifests::launches_in(&format!("k8s {name}"), &docs));
    compose.chain(k8s).collect()
}

/// Whether a k8s container runs the ringcast image (`ringcast`, or `ringcast:TAG` once
/// kustomize has applied the base's `images`).
fn runs_ringcast(container: &Value) -> bool {
    container["image"]
        .as_str()
        .is_some_and(|i| i.split(':').next() == Some("ringcast"))
}

fn num(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| {
            v.as_str()
                .and_then(|s| s.trim_end_matches('s').parse().ok())
        })
        .unwrap_or_else(|| panic!("not a number: {v:?}"))
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

#[test]
fn every_yaml_file_and_the_dashboard_parse() {
    let files = manifests::yaml_files();
    assert!(
        files.len() >= 10,
        "expected the deploy YAML files, found {files:?}"
    );
    for f in &files {
        let docs = manifests::load_docs(f).unwrap_or_else(|e| panic!("{e}"));
        assert!(!docs.is_empty(), "{} has no document", f.display());
    }
    let dashboard = manifests::deploy_dir().join("compose/grafana/dashboards/ringcast.json");
    let text = std::fs::read_to_string(&dashboard).expect("dashboard");
    let v: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    assert!(v["panels"].as_array().is_some_and(|p| p.len() >= 7));
}

fn assert_launch_accepted(l: &Launch, known: &BTreeSet<String>) {
    for (k, _) in &l.env {
        if k.starts_with("RINGCAST_") {
            assert!(
                known.contains(k),
                "{}: {k} is not read by {:?}",
                l.origin,
                l.bin
            );
        }
    }
    let (ok, out) = l.check_config();
    assert!(
        ok,
        "{}: {:?} refused its configuration:\n{out}",
        l.origin, l.bin
    );
}

#[test]
fn every_kustomization_renders_into_the_ringcast_namespace() {
    let renderings = manifests::k8s_renderings();
    assert!(
        renderings.len() >= 4,
        "base and the overlays: {renderings:?}"
    );
    for (name, docs) in &renderings {
        for d in docs {
            let what = format!("{name}: {:?} {:?}", d["kind"], d["metadata"]["name"]);
            if d["kind"].as_str() == Some("Namespace") {
                assert_eq!(d["metadata"]["name"].as_str(), Some("ringcast"), "{what}");
            } else {
                assert_eq!(
                    d["metadata"]["namespace"].as_str(),
                    Some("ringcast"),
                    "{what}"
                );
            }
        }
    }
}

#[test]
fn nodes_and_gateways_share_one_link_secret_kept_in_a_k8s_secret() {
    for launches in all_launches() {
        let secrets: BTreeSet<&str> = launches
            .iter()
            .map(|l| {
                l.var("RINGCAST_LINK_SECRET")
                    .unwrap_or_else(|| panic!("{}: no RINGCAST_LINK_SECRET", l.origin))
            })
            .collect();
        assert_eq!(secrets.len(), 1, "one secret on every side: {secrets:?}");
    }
    // On Kubernetes it comes from a Secret, never a literal in the workload.
    let renderings = manifests::k8s_renderings();
    for (name, w) in renderings.iter().flat_map(|(rendering, docs)| {
        manifests::workloads_in(docs)
            .into_iter()
            .map(move |(n, w)| (format!("{rendering} {n}"), w))
    }) {
        for c in w["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            for e in c["env"].as_sequence().into_iter().flatten() {
                if e["name"].as_str() == Some("RINGCAST_LINK_SECRET") {
                    assert!(e["valueFrom"]["secretKeyRef"].is_mapping(), "{name}: {e:?}");
                }
            }
        }
    }
}

/// `l` with the link secret an operator sets in place of the shipped placeholder.
fn with_the_operators_link_secret(l: &Launch) -> Launch {
    let mut l = l.clone();
    let value = manifests::operator_value("RINGCAST_LINK_SECRET");
    l.env.retain(|(k, _)| k != "RINGCAST_LINK_SECRET");
    l.env.push(("RINGCAST_LINK_SECRET".into(), value));
    l
}

#[test]
fn the_shipped_link_secret_is_a_placeholder_both_binaries_refuse_and_compose_requires_one() {
    for (name, docs) in manifests::k8s_renderings() {
        let k8s = manifests::launches_in(&format!("k8s {name}"), &docs);
        assert_eq!(k8s.len(), 2, "{name}");
        the_shipped_placeholder_is_refused(&k8s);
    }
    // Compose has no default for it: `docker compose up` stops and says to set it.
    for file in manifests::compose_files() {
        let compose = manifests::compose_at(&file);
        let raw = compose["services"]["gateway"]["environment"]["RINGCAST_LINK_SECRET"]
            .as_str()
            .expect("the gateway's link secret");
        assert!(raw.starts_with("${RINGCAST_LINK_SECRET:?"), "{raw}");
        for name in ["node1", "node2", "node3"] {
            let node = &compose["services"][name]["environment"]["RINGCAST_LINK_SECRET"];
            assert_eq!(node.as_str(), Some(raw), "{} {name}", file.display());
        }
    }
}

fn the_shipped_placeholder_is_refused(k8s: &[Launch]) {
    for l in k8s {
        let shipped = l.var("RINGCAST_LINK_SECRET").expect("set from the Secret");
        assert!(shipped.starts_with("replace-me"), "{}: {shipped}", l.origin);
        let (ok, out) = l.check_config();
        assert!(!ok, "{}: the public placeholder was accepted", l.origin);
        assert!(out.contains("placeholder"), "{}: {out}", l.origin);
        assert!(
            out.contains("kubectl"),
            "{}: say how to set it: {out}",
            l.origin
        );
        assert!(!out.contains(shipped), "{}: {out}", l.origin);
        assert!(
            with_the_operators_link_secret(l).check_config().0,
            "{}",
            l.origin
        );
    }
}

#[test]
fn compose_and_k8s_configure_the_binaries_with_flags_and_variables_they_accept() {
    let node_envs = Bin::Node.known_envs();
    let gateway_envs = Bin::Gateway.known_envs();
    assert!(node_envs.contains("RINGCAST_ADVERTISE") && gateway_envs.contains("RINGCAST_NODES"));
    let count = |ls: &[Launch], b: Bin| ls.iter().filter(|l| l.bin == b).count();
    let compose_files = manifests::compose_files();
    assert_eq!(compose_files.len(), 2, "{compose_files:?}");
    for f in &compose_files {
        let compose = manifests::compose_launches_of(f);
        let counts = (count(&compose, Bin::Node), count(&compose, Bin::Gateway));
        assert_eq!(counts, (3, 1), "{}", f.display());
    }
    for (name, docs) in manifests::k8s_renderings() {
        let k8s = manifests::launches_in(&name, &docs);
        assert_eq!((count(&k8s, Bin::Node), count(&k8s, Bin::Gateway)), (1, 1));
    }
    for l in all_launches().iter().flatten() {
        // The Secret as the operator creates it: the shipped one is a placeholder.
        let l = &with_the_operators_link_secret(l);
        let known = match l.bin {
            Bin::Node => &node_envs,
            Bin::Gateway => &gateway_envs,
        };
        assert_launch_accepted(l, known);
        // Both must reach each other through Redis (one, or a Redis Cluster: never both, which
        // the binaries refuse); nodes must register where gateways look.
        let redis = ["RINGCAST_REDIS_URL", "RINGCAST_REDIS_CLUSTER"].map(|k| l.var(k).is_some());
        assert!(redis[0] != redis[1], "{}: {:?}", l.origin, l.env);
        if l.bin == Bin::Node {
            let advertise = l.var("RINGCAST_ADVERTISE").expect("nodes advertise");
            let listen = l.var("RINGCAST_LISTEN").expect("nodes listen");
            assert_eq!(port_of(advertise), port_of(listen), "{}", l.origin);
            assert!(listen.starts_with("0.0.0.0:"), "{}: {listen}", l.origin);
        }
    }
    // The check is real: a misspelt value is refused.
    let mut bad = with_the_operators_link_secret(&manifests::k8s_launches()[0]);
    bad.env
        .push(("RINGCAST_DRAIN_DELAY_SECS".into(), "five".into()));
    bad.env
        .push(("RINGCAST_SHUTDOWN_GRACE_SECS".into(), "five".into()));
    assert!(!bad.check_config().0, "a bad value passed --check-config");
}

#[test]
fn the_image_environment_is_read_by_both_binaries() {
    let dockerfile =
        std::fs::read_to_string(manifests::deploy_dir().join("docker/Dockerfile")).expect("read");
    let envs: Vec<&str> = dockerfile
        .split(|c: char| c.is_whitespace() || c == '\\')
        .filter_map(|w| w.split_once('=').map(|(k, _)| k))
        .filter(|k| k.starts_with("RINGCAST_"))
        .collect();
    assert!(envs.contains(&"RINGCAST_LISTEN"), "{envs:?}");
    for bin in [Bin::Node, Bin::Gateway] {
        let known = bin.known_envs();
        for e in &envs {
            assert!(known.contains(*e), "{bin:?} does not read {e}");
        }
    }
    for needle in [
        "cargo build --locked --release -p ringcast-node -p ringcast-gateway",
        "USER 10001",
        "EXPOSE 9001 8080",
        "/usr/local/bin/",
    ] {
        assert!(dockerfile.contains(needle), "Dockerfile lacks {needle}");
    }
}

#[test]
fn grace_periods_cover_the_drain() {
    let renderings = manifests::k8s_renderings();
    for (name, w) in renderings.iter().flat_map(|(rendering, docs)| {
        manifests::workloads_in(docs)
            .into_iter()
            .map(move |(n, w)| (format!("{rendering} {n}"), w))
    }) {
        let pod = &w["spec"]["template"]["spec"];
        let Some(c) = pod["containers"]
            .as_sequence()
            .and_then(|cs| cs.iter().find(|c| runs_ringcast(c)))
        else {
            continue;
        };
        let env = |k: &str| {
            c["env"]
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|e| e["name"].as_str() == Some(k))
                .map(|e| num(&e["value"]))
        };
        let pre_stop: u64 = c["lifecycle"]["preStop"]["exec"]["command"]
            .as_sequence()
            .and_then(|cmd| cmd.get(1))
            .map(num)
            .unwrap_or(0);
        let drain = env("RINGCAST_DRAIN_DELAY_SECS").unwrap_or(0);
        let grace = env("RINGCAST_SHUTDOWN_GRACE_SECS").expect("grace set explicitly");
        let budget = num(&pod["terminationGracePeriodSeconds"]);
        assert!(
            pre_stop + drain + grace < budget,
            "{name}: preStop {pre_stop} + drain {drain} + grace {grace} >= {budget}"
        );
        if w["kind"].as_str() == Some("StatefulSet") {
            assert!(drain >= 2, "{name}: nodes need a drain delay before 1012");
        }
    }
    for file in manifests::compose_files() {
        compose_grace_periods_cover_the_drain(&file);
    }
}

fn compose_grace_periods_cover_the_drain(file: &std::path::Path) {
    let compose = manifests::compose_at(file);
    for l in manifests::compose_launches_of(file) {
        let service = l.origin.rsplit(' ').next().expect("service name");
        let stop = num(&compose["services"][service]["stop_grace_period"]);
        let drain = l
            .var("RINGCAST_DRAIN_DELAY_SECS")
            .map_or(0, |v| num(&v.into()));
        let grace = l
            .var("RINGCAST_SHUTDOWN_GRACE_SECS")
            .map_or(10, |v| num(&v.into()));
        assert!(
            drain + grace < stop,
            "{}: {drain} + {grace} >= {stop}",
            l.origin
        );
    }
}

#[test]
fn ports_agree_across_services_scrape_configs_and_annotations() {
    // Compose: Prometheus scrapes each ringcast service on the port it listens on.
    let prom = manifests::load_docs(&manifests::deploy_dir().join("compose/prometheus.yml"))
        .expect("prometheus.yml")
        .remove(0);
    let targets: BTreeSet<String> = prom["scrape_configs"]
        .as_sequence()
        .into_iter()
        .flatten()
        .inspect(|j| assert_eq!(j["metrics_path"].as_str(), Some("/metrics")))
        .flat_map(|j| {
            j["static_configs"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|s| s["targets"].as_sequence().cloned().unwrap_or_default())
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    // Every compose file mounts that one prometheus.yml, so all run the same services.
    for file in manifests::compose_files() {
        let mut expected = BTreeSet::new();
        for l in manifests::compose_launches_of(&file) {
            let service = l.origin.rsplit(' ').next().expect("service name");
            let port = port_of(l.var("RINGCAST_LISTEN").expect("listen"));
            expected.insert(format!("{service}:{port}"));
            if l.bin == Bin::Gateway {
                assert_eq!(port, 8080);
                let compose = manifests::compose_at(&file);
                let published = compose["services"][service]["ports"][0].clone();
                assert_eq!(published.as_str(), Some("8080:8080"));
            }
        }
        assert_eq!(targets, expected, "{}", file.display());
    }

    // Kubernetes: probes, annotations and Services point at the port the container listens on.
    for (rendering, docs) in manifests::k8s_renderings() {
        k8s_ports_agree(&rendering, &docs);
    }
}

fn k8s_ports_agree(rendering: &str, docs: &[Value]) {
    for (name, w) in manifests::workloads_in(docs) {
        let template = &w["spec"]["template"];
        let Some(c) = template["spec"]["containers"]
            .as_sequence()
            .and_then(|cs| cs.iter().find(|c| runs_ringcast(c)))
        else {
            continue;
        };
        let listen = c["env"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|e| e["name"].as_str() == Some("RINGCAST_LISTEN"))
            .and_then(|e| e["value"].as_str())
            .expect("RINGCAST_LISTEN");
        let port = u64::from(port_of(listen));
        let named = &c["ports"][0];
        assert_eq!(num(&named["containerPort"]), port, "{name}");
        let port_name = named["name"].as_str().expect("named port");
        // With TLS on the public port, probes and scrapes use the plain listener beside it.
        let plain = c["env"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|e| e["name"].as_str() == Some("RINGCAST_PLAIN_LISTEN"))
            .and_then(|e| e["value"].as_str())
            .map(|addr| u64::from(port_of(addr)));
        let (probe_port, probe_name) = match plain {
            Some(plain) => {
                let p = c["ports"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .find(|p| num(&p["containerPort"]) == plain)
                    .unwrap_or_else(|| panic!("{rendering} {name}: plain port {plain} unnamed"));
                (plain, p["name"].as_str().expect("named port"))
            }
            None => (port, port_name),
        };
        for probe in ["readinessProbe", "livenessProbe"] {
            let p = &c[probe]["httpGet"];
            assert_eq!(p["port"].as_str(), Some(probe_name), "{name} {probe}");
            assert!(p["path"].as_str().is_some(), "{name} {probe} path");
        }
        let ann = &template["metadata"]["annotations"];
        assert_eq!(ann["prometheus.io/scrape"].as_str(), Some("true"), "{name}");
        assert_eq!(num(&ann["prometheus.io/port"]), probe_port, "{name}");
        assert_eq!(
            ann["prometheus.io/path"].as_str(),
            Some("/metrics"),
            "{name}"
        );
        let service = docs.iter().find(|d| {
            d["kind"].as_str() == Some("Service")
                && d["spec"]["selector"] == template["metadata"]["labels"]
        });
        let service = service.unwrap_or_else(|| panic!("{rendering}: no Service selects {name}"));
        assert_eq!(
            service["spec"]["ports"][0]["targetPort"].as_str(),
            Some(port_name)
        );
    }
}

#[test]
fn the_scaled_overlay_scales_workloads_of_the_base() {
    // The overlay scales workloads that exist in the base.
    let overlay = manifests::load_docs(
        &manifests::deploy_dir().join("k8s/overlays/scaled/kustomization.yaml"),
    )
    .expect("overlay")
    .remove(0);
    let names: Vec<String> = manifests::k8s_workloads()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let replicas = overlay["replicas"].as_sequence().expect("replicas");
    assert!(!replicas.is_empty());
    for r in replicas {
        let n = r["name"].as_str().expect("name");
        assert!(names.iter().any(|x| x == n), "overlay scales unknown {n}");
    }
}

/// A launch of `bin` with only `env` set.
fn launch(bin: Bin, args: &[&str], env: &[(&str, &str)]) -> Launch {
    Launch {
        origin: format!("{bin:?} {args:?}"),
        bin,
        args: args.iter().map(|a| a.to_string()).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        mounts: Vec::new(),
    }
}

#[test]
fn a_bad_link_secret_is_refused_without_being_printed_and_a_files_newline_is_dropped() {
    // Each bad value holds the marker, which must not appear in anything the binary prints.
    const MARK: &str = "Sekr1tMarker";
    let bad = [
        MARK.to_owned(),
        format!("{MARK} with a space in it"),
        format!("{MARK}-line\nbreak-in-the-middle"),
        format!("{MARK}-two-newlines-at-the-end\n\n"),
    ];
    for bin in [Bin::Node, Bin::Gateway] {
        for value in &bad {
            let by_flag = launch(bin, &["--link-secret", value], &[]);
            let by_env = launch(bin, &[], &[("RINGCAST_LINK_SECRET", value)]);
            for l in [by_flag, by_env] {
                let (ok, out) = l.check_config();
                assert!(!ok, "{}: {value:?} was accepted", l.origin);
                assert!(
                    !out.contains(MARK),
                    "{}: the secret was printed:\n{out}",
                    l.origin
                );
                assert!(out.contains("--link-secret"), "{}: {out}", l.origin);
            }
        }
        // A Secret made from `openssl rand -hex 32 > file` ends in a newline.
        for value in [
            "7f3a9c0e5b2d4f6a8c1e3b5d7f9a2c4e\n",
            "7f3a9c0e5b2d4f6a8c1e3b5d7f9a2c4e\r\n",
        ] {
            let l = launch(bin, &[], &[("RINGCAST_LINK_SECRET", value)]);
            let (ok, out) = l.check_config();
            assert!(ok, "{}: {value:?} refused:\n{out}", l.origin);
        }
    }
}

/// `args`' value after `flag` (`--flag value` as two items).
fn arg_after<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_owned))
        .collect()
}

/// Checks one launch of a Redis Cluster variant: the seeds, and no single-Redis URL.
fn uses_exactly_these_seeds(l: &Launch, seeds: &[String]) {
    assert!(
        l.env.iter().all(|(k, _)| k != "RINGCAST_REDIS_URL"),
        "{}: RINGCAST_REDIS_URL is still set (refused next to RINGCAST_REDIS_CLUSTER)",
        l.origin
    );
    let got: Vec<String> = l
        .var("RINGCAST_REDIS_CLUSTER")
        .unwrap_or_else(|| panic!("{}: no RINGCAST_REDIS_CLUSTER", l.origin))
        .split(',')
        .map(str::to_owned)
        .collect();
    assert_eq!(got, seeds, "{}", l.origin);
}

#[test]
fn the_redis_cluster_variants_run_six_redis_nodes_made_into_a_cluster_and_give_ringcast_their_seeds(
) {
    // The flag and variable the variants rely on exist in both binaries.
    for bin in [Bin::Node, Bin::Gateway] {
        let help = bin.help();
        for needle in ["--redis-cluster", "[env: RINGCAST_REDIS_CLUSTER="] {
            assert!(help.contains(needle), "{bin:?} --help lacks {needle}");
        }
    }
    let overlay_dir = manifests::deploy_dir().join("k8s/overlays/redis-cluster");
    let script_path = overlay_dir.join("create-cluster.sh");
    let script = std::fs::read_to_string(&script_path).expect("create-cluster.sh");
    for needle in [
        "redis-cli --cluster create \"$@\" --cluster-replicas 1 --cluster-yes",
        "cluster_state)\" = ok",
        "RINGCAST_REDIS_CLUSTER",
    ] {
        assert!(script.contains(needle), "create-cluster.sh lacks {needle}");
    }

    // Kubernetes: the overlay as kubectl renders it.
    let docs = manifests::kustomize(&overlay_dir);
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| {
                d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name)
            })
            .unwrap_or_else(|| panic!("the overlay has no {kind} {name}"))
    };
    assert!(
        docs.iter()
            .all(|d| d["metadata"]["name"].as_str() != Some("ringcast-redis")),
        "the single Redis is gone"
    );
    let sts = find("StatefulSet", "redis-cluster");
    assert_eq!(num(&sts["spec"]["replicas"]), 6, "3 primaries + 3 replicas");
    let service = sts["spec"]["serviceName"].as_str().expect("serviceName");
    let headless = find("Service", service);
    assert_eq!(headless["spec"]["clusterIP"].as_str(), Some("None"));
    assert_eq!(
        headless["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true)
    );
    let labels = &sts["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&headless["spec"]["selector"], labels);
    let pdb = docs
        .iter()
        .find(|d| {
            d["kind"].as_str() == Some("PodDisruptionBudget")
                && &d["spec"]["selector"]["matchLabels"] == labels
        })
        .expect("a PodDisruptionBudget for the Redis pods");
    assert_eq!(num(&pdb["spec"]["maxUnavailable"]), 1);
    let redis = &sts["spec"]["template"]["spec"]["containers"][0];
    let args = strings(&redis["args"]);
    assert_eq!(
        arg_after(&args, "--cluster-enabled"),
        Some("yes"),
        "{args:?}"
    );
    assert_eq!(
        arg_after(&args, "--cluster-announce-hostname"),
        Some(format!("$(POD_NAME).{service}").as_str())
    );
    // nodes.conf on the pod's own volume, which outlives the pod.
    let conf = arg_after(&args, "--cluster-config-file").expect("--cluster-config-file");
    let mount = redis["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"].as_str().is_some_and(|p| conf.starts_with(p)))
        .unwrap_or_else(|| panic!("{conf} is on no volume"));
    let claims = sts["spec"]["volumeClaimTemplates"]
        .as_sequence()
        .expect("claims");
    assert!(
        claims
            .iter()
            .any(|c| c["metadata"]["name"] == mount["name"]),
        "{conf} is not on a volume claim"
    );
    let redis_port = redis["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|p| p["name"].as_str() == Some("redis"))
        .map(|p| num(&p["containerPort"]))
        .expect("redis port");
    let seeds: Vec<String> = (0..6)
        .map(|i| format!("redis://redis-cluster-{i}.{service}:{redis_port}"))
        .collect();
    let launches = manifests::launches_in("k8s overlays/redis-cluster", &docs);
    assert_eq!(launches.len(), 2);
    for l in &launches {
        uses_exactly_these_seeds(l, &seeds);
    }
    // The Job runs the overlay's script, given the same seeds (the ConfigMap nodes read).
    let job = find("Job", "redis-cluster-create");
    let pod = &job["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(
        c["envFrom"][0]["configMapRef"]["name"].as_str(),
        Some("ringcast-config")
    );
    let command = strings(&c["command"]);
    let run = command.last().expect("a command");
    let mount = c["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"].as_str().is_some_and(|p| run.starts_with(p)))
        .unwrap_or_else(|| panic!("{run} is on no volume"));
    let volume = pod["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
        .expect("the script's volume");
    let config_map = volume["configMap"]["name"].as_str().expect("a ConfigMap");
    assert_eq!(
        find("ConfigMap", config_map)["data"]["create-cluster.sh"].as_str(),
        Some(script.as_str())
    );

    // Compose: six Redis services, the create service running the same script, nodes and
    // gateway waiting for it.
    let file = manifests::deploy_dir().join("compose/docker-compose.redis-cluster.yml");
    let compose = manifests::compose_at(&file);
    let services = compose["services"].as_mapping().expect("services");
    let mut redis_names = Vec::new();
    for (name, svc) in services {
        let command = strings(&svc["command"]).join(" ");
        if !command.contains("redis-server") {
            continue;
        }
        let name = name.as_str().expect("service name");
        assert!(
            command.contains("--cluster-enabled yes"),
            "{name}: {command}"
        );
        assert!(command.contains("--cluster-config-file /data/"), "{name}");
        // It announces its hostname, which is its service name.
        assert_eq!(svc["hostname"].as_str(), Some(name));
        redis_names.push(name.to_owned());
    }
    assert_eq!(redis_names.len(), 6, "{redis_names:?}");
    let seeds: Vec<String> = redis_names
        .iter()
        .map(|n| format!("redis://{n}:6379"))
        .collect();
    let launches = manifests::compose_launches_of(&file);
    assert_eq!(launches.len(), 4);
    for l in &launches {
        uses_exactly_these_seeds(l, &seeds);
        let service = l.origin.rsplit(' ').next().expect("service name");
        let after = &compose["services"][service]["depends_on"]["redis-cluster-create"];
        assert_eq!(
            after["condition"].as_str(),
            Some("service_completed_successfully"),
            "{}",
            l.origin
        );
    }
    let create = &compose["services"]["redis-cluster-create"];
    assert_eq!(
        create["environment"]["RINGCAST_REDIS_CLUSTER"].as_str(),
        Some(seeds.join(",").as_str())
    );
    for n in &redis_names {
        assert_eq!(
            create["depends_on"][n.as_str()]["condition"].as_str(),
            Some("service_healthy"),
            "{n}"
        );
    }
    let command = strings(&create["command"]);
    let run = command.last().expect("a command");
    let mounted = strings(&create["volumes"])
        .into_iter()
        .find_map(|v| {
            let mut parts = v.split(':');
            let (host, inside) = (parts.next()?, parts.next()?);
            (inside == run).then(|| file.parent().expect("compose dir").join(host))
        })
        .unwrap_or_else(|| panic!("{run} is not mounted"));
    assert_eq!(
        std::fs::canonicalize(&mounted).expect("mounted script exists"),
        std::fs::canonicalize(&script_path).expect("script")
    );
}

/// The gateway of a TLS variant reads its pair from a mount, and `--check-config` with the
/// manifest's exact arguments loads it: a good pair passes, a key of another certificate fails.
fn tls_launch_loads_its_mounted_pair(l: &Launch) {
    let l = &with_the_operators_link_secret(l);
    let cert = l.var("RINGCAST_TLS_CERT").expect("RINGCAST_TLS_CERT");
    let key = l.var("RINGCAST_TLS_KEY").expect("RINGCAST_TLS_KEY");
    for file in [cert, key] {
        assert!(
            l.mounts.iter().any(|m| file.starts_with(&format!("{m}/"))),
            "{}: {file} is not under a mount ({:?})",
            l.origin,
            l.mounts
        );
    }
    let (ok, out) = l.check_config();
    assert!(ok, "{}: {out}", l.origin);
    let ca = support::tls::TestCa::new();
    let (one, other) = (ca.issue("one", 1, false), ca.issue("other", 2, false));
    let mismatched = support::tls::ServerPair {
        cert_pem: one.cert_pem,
        key_pem: other.key_pem,
        serial: one.serial,
        spki: one.spki,
    };
    let (ok, out) = l.check_config_with(&mismatched);
    assert!(
        !ok && out.contains("is not the private key"),
        "{}: {out}",
        l.origin
    );
}

#[test]
fn the_tls_variants_mount_a_certificate_pair_the_gateway_loads() {
    // Kubernetes: the tls overlay mounts the operator's kubernetes.io/tls Secret.
    let (_, docs) = manifests::k8s_renderings()
        .into_iter()
        .find(|(name, _)| name == "overlays/tls")
        .expect("overlays/tls");
    let gateway = manifests::launches_in("k8s overlays/tls", &docs)
        .into_iter()
        .find(|l| l.bin == Bin::Gateway)
        .expect("a gateway");
    tls_launch_loads_its_mounted_pair(&gateway);
    assert!(
        !docs.iter().any(|d| d["kind"].as_str() == Some("Secret")
            && d["metadata"]["name"].as_str() == Some("ringcast-tls")),
        "the certificate Secret is the operator's, never shipped"
    );
    let (_, deployment) = manifests::workloads_in(&docs)
        .into_iter()
        .find(|(n, _)| n == "ringcast-gateway")
        .expect("gateway Deployment");
    let volumes = &deployment["spec"]["template"]["spec"]["volumes"];
    assert_eq!(
        volumes[0]["secret"]["secretName"].as_str(),
        Some("ringcast-tls")
    );
    let service = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("Service") && d["metadata"]["name"] == "ringcast")
        .expect("Service ringcast");
    assert_eq!(num(&service["spec"]["ports"][0]["port"]), 443);

    // Compose: the override on top of each stack.
    let over = manifests::deploy_dir().join("compose/compose.tls.yml");
    for base in manifests::compose_files() {
        let gateway = manifests::compose_launches_with(&base, &over)
            .into_iter()
            .find(|l| l.bin == Bin::Gateway)
            .expect("a gateway");
        tls_launch_loads_its_mounted_pair(&gateway);
        // Prometheus (prometheus.yml) still scrapes gateway:8080, now the plain listener.
        let plain = gateway
            .var("RINGCAST_PLAIN_LISTEN")
            .expect("plain listener");
        assert_eq!(port_of(plain), 8080, "{}", gateway.origin);
    }
    let text = std::fs::read_to_string(&over).expect("read compose.tls.yml");
    assert!(
        text.contains("ports: !override\n      - \"8443:8443\""),
        "{text}"
    );
}

/// Runs `program args…`; panics with `what` and the tool's output when it fails (or is missing:
/// the README's test command installs it).
fn tool(program: &str, args: &[&str], what: &str) {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{what}: cannot run {program} ({e}); the README's test command installs it")
        });
    assert!(
        out.status.success(),
        "{what}: {program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_kustomization_is_valid_against_the_kubernetes_schemas_strictly() {
    let dir = std::env::temp_dir().join(format!("ringcast-k8s-schema-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for (name, path) in manifests::k8s_dirs() {
        // kustomize's own text: a YAML round trip could unquote a string such as "no", which
        // the validator (YAML 1.1) would then read as a boolean.
        let file = dir.join(format!("{}.yaml", name.replace('/', "-")));
        let out = format!("--output={}", file.display());
        let dir_arg = path.display().to_string();
        tool(
            "kubectl",
            &["kustomize", &dir_arg, &out],
            &format!("render {name}"),
        );
        let file = file.display().to_string();
        tool(
            "kubernetes-validate",
            &["--strict", "--quiet", &file],
            &format!("{name} against the Kubernetes schemas"),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_compose_file_is_valid_against_the_compose_spec() {
    for file in manifests::compose_files() {
        let path = file.display().to_string();
        tool(
            "check-jsonschema",
            &["--builtin-schema", "vendor.compose-spec", &path],
            &format!("{path} against the compose spec"),
        );
    }
}

#[test]
fn the_dashboard_has_a_stable_uid_and_every_query_uses_its_datasource_variable() {
    let path = manifests::deploy_dir().join("compose/grafana/dashboards/ringcast.json");
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    assert_eq!(
        d["uid"], "ringcast",
        "links and provisioning rely on the uid"
    );
    let vars = d["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter().any(|v| v["type"] == "datasource"
            && v["name"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus datasource variable: {vars:?}"
    );
    for panel in d["panels"].as_array().expect("panels") {
        let title = &panel["title"];
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {title}");
        for t in panel["targets"].as_array().expect("targets") {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "panel {title}");
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(
                !expr.contains("[1m]") && !expr.contains("[5m]"),
                "panel {title}: use $__rate_interval, not a fixed range: {expr}"
            );
        }
    }
}

#[test]
fn the_alert_rules_pass_promtool_and_each_has_a_for_a_severity_a_summary_and_a_runbook() {
    let dir = manifests::deploy_dir().join("prometheus");
    let rules = dir.join("alerts.yml").display().to_string();
    tool("promtool", &["check", "rules", &rules], "alerts.yml");
    let tests = dir.join("alerts.test.yml").display().to_string();
    tool("promtool", &["test", "rules", &tests], "alerts.test.yml");
    let alerts: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(&rules).expect("alerts.yml"))
            .expect("YAML");
    let runbook = std::fs::read_to_string(manifests::deploy_dir().join("../docs/runbook.md"))
        .expect("docs/runbook.md");
    let tested = std::fs::read_to_string(&tests).expect("alerts.test.yml");
    let mut names = Vec::new();
    for group in alerts["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("alerting rules only");
            assert!(rule["for"].as_str().is_some(), "{name}: a for:");
            assert!(
                matches!(
                    rule["labels"]["severity"].as_str(),
                    Some("critical" | "warning")
                ),
                "{name}: severity critical or warning"
            );
            assert!(
                rule["annotations"]["summary"].as_str().is_some(),
                "{name}: a summary"
            );
            let anchor = format!("docs/runbook.md#{}", name.to_lowercase());
            assert_eq!(
                rule["annotations"]["runbook"].as_str(),
                Some(anchor.as_str())
            );
            assert!(
                runbook.contains(&format!("\n## {name}\n")),
                "docs/runbook.md has no section for {name}"
            );
            assert!(
                tested.contains(&format!("alertname: {name}\n")),
                "alerts.test.yml does not test {name}"
            );
            names.push(name.to_owned());
        }
    }
    assert!(names.len() >= 12, "{names:?}");
}

#[test]
fn prometheus_gets_the_alert_rules_in_compose_and_in_kubernetes() {
    let alerts = std::fs::read_to_string(manifests::deploy_dir().join("prometheus/alerts.yml"))
        .expect("alerts.yml");
    for (name, docs) in manifests::k8s_renderings() {
        let cm = docs
            .iter()
            .find(|d| {
                d["kind"] == "ConfigMap" && d["metadata"]["name"] == "ringcast-prometheus-rules"
            })
            .unwrap_or_else(|| panic!("{name}: no ringcast-prometheus-rules ConfigMap"));
        assert!(
            cm["data"]["ringcast-alerts.yml"].as_str() == Some(alerts.as_str()),
            "{name}: the rules ConfigMap differs from deploy/prometheus/alerts.yml; run \
             python3 deploy/prometheus/sync-configmap.py"
        );
    }
    let config: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(manifests::deploy_dir().join("compose/prometheus.yml"))
            .expect("prometheus.yml"),
    )
    .expect("YAML");
    assert_eq!(config["rule_files"][0], "/etc/prometheus/alerts.yml");
    for file in manifests::compose_files() {
        let compose = manifests::compose_at(&file);
        if compose["services"]["prometheus"].is_null() {
            continue;
        }
        let mounts =
            serde_norway::to_string(&compose["services"]["prometheus"]["volumes"]).expect("YAML");
        assert!(
            mounts.contains("../prometheus/alerts.yml:/etc/prometheus/alerts.yml"),
            "{}: Prometheus does not mount the alert rules: {mounts}",
            file.display()
        );
    }
}
