//! Static checks of the deploy manifests against the real binaries: every YAML parses; every
//! flag and `RINGCAST_*` variable compose and Kubernetes pass is one the binary reads and accepts
//! (`--check-config`); drain timings fit the grace periods; ports agree across files.

mod support;

use std::collections::BTreeSet;

use serde_norway::Value;
use support::manifests::{self, Bin, Launch};

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
fn nodes_and_gateways_share_one_link_secret_kept_in_a_k8s_secret() {
    for launches in [manifests::compose_launches(), manifests::k8s_launches()] {
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
    for (name, w) in manifests::k8s_workloads() {
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
    let k8s = manifests::k8s_launches();
    for l in &k8s {
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
    assert_eq!(k8s.len(), 2);
    // Compose has no default for it: `docker compose up` stops and says to set it.
    let compose = manifests::compose();
    let raw = compose["services"]["gateway"]["environment"]["RINGCAST_LINK_SECRET"]
        .as_str()
        .expect("the gateway's link secret");
    assert!(raw.starts_with("${RINGCAST_LINK_SECRET:?"), "{raw}");
    for name in ["node1", "node2", "node3"] {
        let node = &compose["services"][name]["environment"]["RINGCAST_LINK_SECRET"];
        assert_eq!(node.as_str(), Some(raw), "{name}");
    }
}

#[test]
fn compose_and_k8s_configure_the_binaries_with_flags_and_variables_they_accept() {
    let node_envs = Bin::Node.known_envs();
    let gateway_envs = Bin::Gateway.known_envs();
    assert!(node_envs.contains("RINGCAST_ADVERTISE") && gateway_envs.contains("RINGCAST_NODES"));
    let compose = manifests::compose_launches();
    let k8s = manifests::k8s_launches();
    let count = |ls: &[Launch], b: Bin| ls.iter().filter(|l| l.bin == b).count();
    assert_eq!(
        (count(&compose, Bin::Node), count(&compose, Bin::Gateway)),
        (3, 1)
    );
    assert_eq!((count(&k8s, Bin::Node), count(&k8s, Bin::Gateway)), (1, 1));
    for l in compose.iter().chain(&k8s) {
        // The Secret as the operator creates it: the shipped one is a placeholder.
        let l = &with_the_operators_link_secret(l);
        let known = match l.bin {
            Bin::Node => &node_envs,
            Bin::Gateway => &gateway_envs,
        };
        assert_launch_accepted(l, known);
        // Both must reach each other through Redis; nodes must register where gateways look.
        assert!(l.var("RINGCAST_REDIS_URL").is_some(), "{}", l.origin);
        if l.bin == Bin::Node {
            let advertise = l.var("RINGCAST_ADVERTISE").expect("nodes advertise");
            let listen = l.var("RINGCAST_LISTEN").expect("nodes listen");
            assert_eq!(port_of(advertise), port_of(listen), "{}", l.origin);
            assert!(listen.starts_with("0.0.0.0:"), "{}: {listen}", l.origin);
        }
    }
    // The check is real: a misspelt value is refused.
    let mut bad = with_the_operators_link_secret(&k8s[0]);
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
    for (name, w) in manifests::k8s_workloads() {
        let pod = &w["spec"]["template"]["spec"];
        let Some(c) = pod["containers"]
            .as_sequence()
            .and_then(|cs| cs.iter().find(|c| c["image"].as_str() == Some("ringcast")))
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
    let compose = manifests::compose();
    for l in manifests::compose_launches() {
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
    let mut expected = BTreeSet::new();
    for l in manifests::compose_launches() {
        let service = l.origin.rsplit(' ').next().expect("service name");
        let port = port_of(l.var("RINGCAST_LISTEN").expect("listen"));
        expected.insert(format!("{service}:{port}"));
        if l.bin == Bin::Gateway {
            assert_eq!(port, 8080);
            let published = manifests::compose()["services"][service]["ports"][0].clone();
            assert_eq!(published.as_str(), Some("8080:8080"));
        }
    }
    assert_eq!(targets, expected);

    // Kubernetes: probes, annotations and Services point at the port the container listens on.
    for (name, w) in manifests::k8s_workloads() {
        let template = &w["spec"]["template"];
        let Some(c) = template["spec"]["containers"]
            .as_sequence()
            .and_then(|cs| cs.iter().find(|c| c["image"].as_str() == Some("ringcast")))
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
        for probe in ["readinessProbe", "livenessProbe"] {
            let p = &c[probe]["httpGet"];
            assert_eq!(p["port"].as_str(), Some(port_name), "{name} {probe}");
            assert!(p["path"].as_str().is_some(), "{name} {probe} path");
        }
        let ann = &template["metadata"]["annotations"];
        assert_eq!(ann["prometheus.io/scrape"].as_str(), Some("true"), "{name}");
        assert_eq!(num(&ann["prometheus.io/port"]), port, "{name}");
        assert_eq!(
            ann["prometheus.io/path"].as_str(),
            Some("/metrics"),
            "{name}"
        );
        let service = manifests::k8s_base_docs().into_iter().find(|d| {
            d["kind"].as_str() == Some("Service")
                && d["spec"]["selector"] == template["metadata"]["labels"]
        });
        let service = service.unwrap_or_else(|| panic!("no Service selects {name}"));
        assert_eq!(
            service["spec"]["ports"][0]["targetPort"].as_str(),
            Some(port_name)
        );
    }

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
