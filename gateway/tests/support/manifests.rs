//! Reading the deploy manifests (`deploy/compose`, `deploy/k8s`) the way their runtimes would:
//! every YAML document, and how each one launches `ringcast-node` / `ringcast-gateway` (command
//! arguments plus the environment it ends up with).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::Value;

/// The repository's `deploy/` folder.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every `.yml` / `.yaml` file under `deploy/`, sorted.
pub fn yaml_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read deploy dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&deploy_dir(), &mut out);
    out.sort();
    out
}

/// Every document of a YAML file, with `<<` merge keys applied (as docker compose does).
pub fn load_docs(path: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_docs(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_docs(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for de in serde_norway::Deserializer::from_str(text) {
        let mut v: Value = serde::Deserialize::deserialize(de).map_err(|e| e.to_string())?;
        v.apply_merge().map_err(|e| format!("merge: {e}"))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// Which binary a container runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bin {
    /// `ringcast-node`.
    Node,
    /// `ringcast-gateway`.
    Gateway,
}

impl Bin {
    /// The binary built by this test run.
    pub fn path(self) -> PathBuf {
        match self {
            Bin::Node => super::node_binary(),
            Bin::Gateway => PathBuf::from(env!("CARGO_BIN_EXE_ringcast-gateway")),
        }
    }

    fn from_command(cmd: &str) -> Option<Bin> {
        match cmd {
            "ringcast-node" => Some(Bin::Node),
            "ringcast-gateway" => Some(Bin::Gateway),
            _ => None,
        }
    }

    /// The binary's `--help` output.
    pub fn help(self) -> String {
        let out = Command::new(self.path())
            .arg("--help")
            .output()
            .expect("run --help");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every `RINGCAST_*` variable the binary reads, from its `--help` (`[env: NAME=…]`).
    pub fn known_envs(self) -> BTreeSet<String> {
        self.help()
            .split("[env: ")
            .skip(1)
            .filter_map(|rest| rest.split(['=', ']']).next().map(str::to_owned))
            .collect()
    }
}

/// One way a manifest starts a binary.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Where it comes from (file and service/workload name).
    pub origin: String,
    /// The binary.
    pub bin: Bin,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// The environment the manifest gives it.
    pub env: Vec<(String, String)>,
    /// Where the manifest mounts files the operator provides (a k8s Secret volume, a compose
    /// bind mount): [`Launch::check_config`] puts a certificate pair made for the test there.
    pub mounts: Vec<String>,
}

impl Launch {
    /// Value of one variable of the launch's environment.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Runs the binary with the launch's arguments and environment (nothing else of ours) plus
    /// `--check-config`; returns (success, stdout + stderr). Paths under a mount are redirected
    /// to a directory holding what a `kubernetes.io/tls` Secret holds, `tls.crt` and `tls.key`
    /// (a valid pair made here), so the binary loads and checks a real pair.
    pub fn check_config(&self) -> (bool, String) {
        self.check_config_with(&super::tls::TestCa::new().issue("manifest", 0x42, false))
    }

    /// [`Launch::check_config`] with `pair` as the mounted `tls.crt` / `tls.key`.
    pub fn check_config_with(&self, pair: &super::tls::ServerPair) -> (bool, String) {
        let files = super::tls::Scratch::new(&format!(
            "mounted-{}",
            std::thread::current()
                .name()
                .unwrap_or("t")
                .replace("::", "-")
        ));
        pair.write(&files.path("tls.crt"), &files.path("tls.key"));
        let redirect = |v: &str| {
            for m in &self.mounts {
                if let Some(rest) = v.strip_prefix(m.as_str()) {
                    if rest.starts_with('/') {
                        return format!("{}{rest}", files.0.display());
                    }
                }
            }
            v.to_owned()
        };
        let mut cmd = Command::new(self.bin.path());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .args(self.args.iter().map(|a| redirect(a)))
            .arg("--check-config");
        for (k, v) in &self.env {
            cmd.env(k, redirect(v));
        }
        let out = cmd.output().expect("run binary with --check-config");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success() && text.contains("config ok"), text)
    }
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_sequence)
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

/// The compose file's parsed document.
pub fn compose() -> Value {
    compose_at(&deploy_dir().join("compose/docker-compose.yml"))
}

/// Every compose file (`deploy/compose/docker-compose*.yml`: the stack and its variants), sorted.
pub fn compose_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = yaml_files()
        .into_iter()
        .filter(|p| {
            p.parent() == Some(&deploy_dir().join("compose"))
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("docker-compose"))
        })
        .collect();
    files.sort();
    files
}

/// A compose file's parsed document.
pub fn compose_at(path: &Path) -> Value {
    load_docs(path).expect("compose parses").remove(0)
}

/// Services of the compose file that run a ringcast binary.
pub fn compose_launches() -> Vec<Launch> {
    compose_launches_of(&deploy_dir().join("compose/docker-compose.yml"))
}

/// Services of the compose file at `path` that run a ringcast binary.
pub fn compose_launches_of(path: &Path) -> Vec<Launch> {
    let file = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let file = file.unwrap_or_default();
    let doc = compose_at(path);
    let services = doc["services"].as_mapping().expect("services");
    let mut launches = Vec::new();
    for (name, svc) in services {
        let command = str_list(svc.get("command"));
        let Some(bin) = command.first().and_then(|c| Bin::from_command(c)) else {
            continue;
        };
        let env = svc
            .get("environment")
            .and_then(Value::as_mapping)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (scalar(k), interpolate(&scalar(v))))
                    .collect()
            })
            .unwrap_or_default();
        launches.push(Launch {
            origin: format!("{file} service {}", scalar(name)),
            bin,
            args: command[1..].to_vec(),
            env,
            mounts: compose_mounts(svc),
        });
    }
    launches
}

/// The container paths of a compose service's bind mounts (`HOST:CONTAINER[:MODE]`).
fn compose_mounts(svc: &Value) -> Vec<String> {
    str_list(svc.get("volumes"))
        .iter()
        .filter_map(|v| v.split(':').nth(1).map(str::to_owned))
        .collect()
}

/// The launches of compose file `base` with the override file `over` applied to them, as
/// `docker compose -f base -f over` merges them: environment entries replaced or added, mounts
/// added.
pub fn compose_launches_with(base: &Path, over: &Path) -> Vec<Launch> {
    let over_doc = compose_at(over);
    let mut launches = compose_launches_of(base);
    for l in &mut launches {
        let service = l.origin.rsplit(' ').next().unwrap_or_default().to_owned();
        let svc = &over_doc["services"][service.as_str()];
        if svc.is_null() {
            continue;
        }
        l.origin = format!("{} + {}", l.origin, over.display());
        for (k, v) in svc["environment"].as_mapping().into_iter().flatten() {
            let (k, v) = (scalar(k), interpolate(&scalar(v)));
            l.env.retain(|(name, _)| *name != k);
            l.env.push((k, v));
        }
        l.mounts.extend(compose_mounts(svc));
    }
    launches
}

/// Every document of every file the k8s base's kustomization lists.
pub fn k8s_base_docs() -> Vec<Value> {
    let base = deploy_dir().join("k8s/base");
    let kustomization = load_docs(&base.join("kustomization.yaml"))
        .expect("kustomization parses")
        .remove(0);
    str_list(kustomization.get("resources"))
        .iter()
        .flat_map(|r| load_docs(&base.join(r)).expect("resource parses"))
        .collect()
}

/// What `kubectl kustomize DIR` (or `kustomize build DIR`) renders: what `kubectl apply -k`
/// would send.
pub fn kustomize(dir: &Path) -> Vec<Value> {
    let runs = [("kubectl", vec!["kustomize"]), ("kustomize", vec!["build"])];
    for (program, args) in runs {
        let Ok(out) = Command::new(program).args(&args).arg(dir).output() else {
            continue;
        };
        check_kustomize_version(program);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{program} {args:?} {}: {stderr}",
            dir.display()
        );
        let text = String::from_utf8_lossy(&out.stdout);
        return parse_docs(&text).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    panic!(
        "rendering {} needs kubectl (kubectl kustomize) or kustomize on PATH",
        dir.display()
    )
}

/// Fails clearly when the kustomize inside `program` is older than v4: Debian's
/// `kubernetes-client` (kubectl 1.20, kustomize v2) cannot render our overlays.
fn check_kustomize_version(program: &str) {
    let args: &[&str] = if program == "kubectl" {
        &["version", "--client"]
    } else {
        &["version"]
    };
    let Ok(out) = Command::new(program).args(args).output() else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("Kustomize Version: "))
        .or_else(|| (program == "kustomize").then_some(text.trim()))
        .unwrap_or("");
    let major: Option<u32> = version
        .trim()
        .trim_start_matches("kustomize/")
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok());
    assert!(
        major.is_some_and(|m| m >= 4),
        "{program}'s kustomize is {version:?}; rendering the overlays needs kustomize v4 or newer \
         (install a current kubectl, e.g. from the Kubernetes apt repository, or kustomize v5)"
    );
}

/// The k8s base and each overlay under `deploy/k8s/overlays`, rendered by [`kustomize`], by
/// name (`base`, `overlays/NAME`).
pub fn k8s_renderings() -> Vec<(String, Vec<Value>)> {
    k8s_dirs()
        .into_iter()
        .map(|(name, dir)| (name, kustomize(&dir)))
        .collect()
}

/// The k8s base and each overlay directory, by name (`base`, `overlays/NAME`).
pub fn k8s_dirs() -> Vec<(String, PathBuf)> {
    let k8s = deploy_dir().join("k8s");
    let mut dirs = vec!["base".to_owned()];
    let mut overlays: Vec<String> = std::fs::read_dir(k8s.join("overlays"))
        .expect("read overlays")
        .flatten()
        .filter(|e| e.path().join("kustomization.yaml").is_file())
        .map(|e| format!("overlays/{}", e.file_name().to_string_lossy()))
        .collect();
    overlays.sort();
    dirs.extend(overlays);
    dirs.into_iter().map(|d| (d.clone(), k8s.join(d))).collect()
}

/// Workloads (Deployment / StatefulSet) of the k8s base, by name.
pub fn k8s_workloads() -> Vec<(String, Value)> {
    workloads_in(&k8s_base_docs())
}

/// Workloads (Deployment / StatefulSet) among `docs`, by name.
pub fn workloads_in(docs: &[Value]) -> Vec<(String, Value)> {
    docs.iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("Deployment" | "StatefulSet")))
        .map(|d| (scalar(&d["metadata"]["name"]), d.clone()))
        .collect()
}

/// Containers of the k8s base that run a ringcast binary, with the environment Kubernetes would
/// give them: ConfigMap `envFrom`, then `env` (downward-API fields filled with sample values,
/// `$(VAR)` references expanded as the kubelet does).
pub fn k8s_launches() -> Vec<Launch> {
    launches_in("k8s", &k8s_base_docs())
}

/// Like [`k8s_launches`], for the containers among `docs` (e.g. one of [`k8s_renderings`]);
/// each launch's origin starts with `label`.
pub fn launches_in(label: &str, docs: &[Value]) -> Vec<Launch> {
    let config_maps: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some("ConfigMap"))
        .collect();
    let secrets: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some("Secret"))
        .collect();
    let mut launches = Vec::new();
    for (name, workload) in workloads_in(docs) {
        let containers = workload["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .cloned()
            .unwrap_or_default();
        for c in containers {
            let command = str_list(c.get("command"));
            let Some(bin) = command.first().and_then(|x| Bin::from_command(x)) else {
                continue;
            };
            let mut env: Vec<(String, String)> = Vec::new();
            for from in c["envFrom"].as_sequence().into_iter().flatten() {
                let cm_name = from["configMapRef"]["name"].as_str().expect("configMapRef");
                let cm = config_maps
                    .iter()
                    .find(|cm| cm["metadata"]["name"].as_str() == Some(cm_name))
                    .unwrap_or_else(|| panic!("{label} {name}: no ConfigMap {cm_name}"));
                for (k, v) in cm["data"].as_mapping().into_iter().flatten() {
                    env.push((scalar(k), scalar(v)));
                }
            }
            for e in c["env"].as_sequence().into_iter().flatten() {
                let key = scalar(&e["name"]);
                let secret_ref = &e["valueFrom"]["secretKeyRef"];
                let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("status.podIP") => "10.1.2.3".to_owned(),
                    Some("metadata.name") => format!("{name}-0"),
                    Some(other) => panic!("{name}: unexpected fieldRef {other}"),
                    None if secret_ref.is_mapping() => {
                        let (s, k) = (scalar(&secret_ref["name"]), scalar(&secret_ref["key"]));
                        let secret = secrets
                            .iter()
                            .find(|d| scalar(&d["metadata"]["name"]) == s)
                            .unwrap_or_else(|| panic!("{label} {name}: no Secret {s}"));
                        scalar(&secret["stringData"][k.as_str()])
                    }
                    None => expand(&scalar(&e["value"]), &env),
                };
                env.push((key, value));
            }
            let mut args = command[1..].to_vec();
            args.extend(str_list(c.get("args")));
            // Secret volumes: what the operator creates (the certificate pair).
            let volumes = &workload["spec"]["template"]["spec"]["volumes"];
            let mounts = c["volumeMounts"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter(|m| {
                    volumes
                        .as_sequence()
                        .into_iter()
                        .flatten()
                        .any(|v| v["name"] == m["name"] && v["secret"].is_mapping())
                })
                .map(|m| scalar(&m["mountPath"]))
                .collect();
            launches.push(Launch {
                origin: format!("{label} {name}/{}", scalar(&c["name"])),
                bin,
                args,
                env,
                mounts,
            });
        }
    }
    launches
}

/// Expands `${VAR:-default}` as docker compose does with `VAR` unset, and `${VAR:?message}`
/// (which compose refuses to run without) with the value [`operator_value`] stands in for.
fn interpolate(value: &str) -> String {
    let Some(inner) = value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) else {
        return value.to_owned();
    };
    if let Some((_, default)) = inner.split_once(":-") {
        return default.to_owned();
    }
    match inner.split_once(":?") {
        Some((var, _)) => operator_value(var),
        None => value.to_owned(),
    }
}

/// The value a test gives a variable the operator must set (compose's `${VAR:?…}`, the
/// placeholder of a k8s Secret).
pub fn operator_value(var: &str) -> String {
    format!(
        "{}-set-by-the-operator-0123456789",
        var.to_ascii_lowercase()
    )
}

/// Expands `$(VAR)` from the variables defined before, as Kubernetes does.
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = value.to_owned();
    for (k, v) in env.iter().rev() {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}
