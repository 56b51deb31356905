//! Pulls from a real OCI registry (Debian's `docker-registry` on loopback, filled with
//! `skopeo`): pull and run, a tampered blob refused, wrong credentials named, nodes
//! that start an image from a peer's blobs once the registry is gone, `imagePullSecrets`
//! (on one node and across a cluster), and `imagePullPolicy` Never and Always.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tests::{cluster, demo_image, require_root, wait_for, Node};

/// A `docker-registry serve` on 127.0.0.1 with its storage in a temporary folder; killed
/// and removed on drop.
struct Registry {
    dir: PathBuf,
    addr: String,
    child: Child,
}

impl Registry {
    /// Starts a registry; with `htpasswd` (user, password) it requires basic auth.
    fn start(name: &str, htpasswd: Option<(&str, &str)>) -> Registry {
        let dir = std::env::temp_dir().join(format!("peer-registry-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("storage")).expect("creating registry folder");
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp:\n  addr: {addr}\n",
            dir.join("storage").display()
        );
        if let Some((user, password)) = htpasswd {
            let out =
                Command::new("htpasswd").args(["-Bbn", user, password]).output().expect("running htpasswd");
            assert!(out.status.success(), "htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
            std::fs::write(dir.join("htpasswd"), &out.stdout).expect("writing htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd: {{realm: peer-test, path: {}}}\n",
                dir.join("htpasswd").display()
            ));
        }
        std::fs::write(dir.join("config.yml"), config).expect("writing registry config");
        let log = std::fs::File::create(dir.join("registry.log")).expect("creating registry log");
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry (Debian package docker-registry)");
        let registry = Registry { dir, addr, child };
        wait_for("the registry to listen", Duration::from_secs(20), || {
            TcpStream::connect(&registry.addr).ok()
        });
        registry
    }

    /// Pushes the demo image to `repo:tag` with skopeo.
    fn push_demo(&self, repo_tag: &str, creds: Option<&str>) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false"]);
        if let Some(creds) = creds {
            cmd.args(["--dest-creds", creds]);
        }
        let out = cmd
            .arg(format!("oci-archive:{}", demo_image().display()))
            .arg(format!("docker://{}/{repo_tag}", self.addr))
            .output()
            .expect("running skopeo (Debian package skopeo)");
        assert!(
            out.status.success(),
            "skopeo copy failed: {}\nregistry log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// The file the registry keeps the blob `sha256:<hex>` in.
    fn blob_file(&self, hex: &str) -> PathBuf {
        self.dir.join(format!("storage/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }

    /// Stops the registry: from now on every connection to it is refused.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A node whose store no longer holds the demo image (the support code imports it), so
/// a pull has to fetch every blob.
fn node_without_demo(name: &str) -> Node {
    let node = Node::prepare(name);
    node.peer_ok(&["image", "rm", "peer-demo:latest"]);
    node
}

fn deployment(name: &str, image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: 1\n  template:\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n        - name: main\n          image: {image}\n          resources:\n            limits: {{cpu: \"100m\", memory: \"32Mi\"}}\n"
    )
}

/// The layer digests (hex) of the demo image, from its OCI layout tar.
fn demo_layer_hex() -> String {
    let out = Command::new("tar").arg("-xOf").arg(demo_image()).arg("./index.json").output().expect("tar");
    let index: serde_json::Value = serde_json::from_slice(&out.stdout).expect("index.json");
    let manifest_hex =
        index["manifests"][0]["digest"].as_str().expect("manifest digest")["sha256:".len()..].to_owned();
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(demo_image())
        .arg(format!("./blobs/sha256/{manifest_hex}"))
        .output()
        .expect("tar");
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).expect("manifest");
    manifest["layers"][0]["digest"].as_str().expect("layer digest")["sha256:".len()..].to_owned()
}

fn images(node: &Node) -> Vec<String> {
    let out = node.peer_ok(&["image", "ls"]);
    out.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect()
}

#[test]
fn pulled_image_runs_and_answers() {
    if !require_root("pulled_image_runs_and_answers") {
        return;
    }
    let registry = Registry::start("pull", None);
    registry.push_demo("demo:v1", None);
    let mut node = node_without_demo("pull");
    let reference = format!("{}/demo:v1", registry.addr);
    let pulled = node.peer_ok(&["image", "pull", &reference]);
    assert!(pulled.contains(&format!("pulled {reference}")), "pull said {pulled:?}");
    assert!(images(&node).contains(&reference), "image ls: {:?}", images(&node));
    // A second pull finds every blob in the store and still succeeds.
    node.peer_ok(&["image", "pull", &reference]);

    node.start_agent();
    node.write_spec("web.yaml", &deployment("web", &reference));
    let pod = wait_for("the pulled image's pod to run", Duration::from_secs(60), || {
        node.running_pods().into_iter().next()
    });
    let body = node.peer_ok(&["exec", &pod, "--", "/peer-demo", "get", "http://127.0.0.1:8080/"]);
    assert!(body.contains(&format!("hello from {pod}")), "pod {pod} answered {body:?}");
}

#[test]
fn agent_pulls_a_missing_registry_image() {
    if !require_root("agent_pulls_a_missing_registry_image") {
        return;
    }
    let registry = Registry::start("agent", None);
    registry.push_demo("demo:v2", None);
    let mut node = node_without_demo("agent");
    node.start_agent();
    let reference = format!("{}/demo:v2", registry.addr);
    node.write_spec("web.yaml", &deployment("web", &reference));
    let pod = wait_for("the agent to pull and run the image", Duration::from_secs(90), || {
        node.running_pods().into_iter().next()
    });
    let body = node.peer_ok(&["exec", &pod, "--", "/peer-demo", "get", "http://127.0.0.1:8080/"]);
    assert!(body.contains(&format!("hello from {pod}")), "pod {pod} answered {body:?}");
    assert!(images(&node).contains(&reference), "image ls: {:?}", images(&node));
}

#[test]
fn pull_by_digest_stores_the_image() {
    if !require_root("pull_by_digest_stores_the_image") {
        return;
    }
    let registry = Registry::start("digest", None);
    registry.push_demo("demo:v1", None);
    let node = node_without_demo("digest");
    let out = Command::new("tar").arg("-xOf").arg(demo_image()).arg("./index.json").output().expect("tar");
    let index: serde_json::Value = serde_json::from_slice(&out.stdout).expect("index.json");
    let digest = index["manifests"][0]["digest"].as_str().expect("manifest digest").to_owned();
    let reference = format!("{}/demo@{digest}", registry.addr);
    node.peer_ok(&["image", "pull", &reference]);
    // The store finds it by the same digest reference.
    node.peer_ok(&["image", "rm", &reference]);
}

#[test]
fn tampered_layer_is_refused() {
    if !require_root("tampered_layer_is_refused") {
        return;
    }
    let registry = Registry::start("tamper", None);
    registry.push_demo("demo:v1", None);
    let node = node_without_demo("tamper");
    let layer = demo_layer_hex();
    let file = registry.blob_file(&layer);
    // Same length, different bytes: only the digest can tell.
    let mut data = std::fs::read(&file).expect("reading the registry's layer file");
    let last = data.len() - 1;
    data[last] ^= 0xff;
    std::fs::write(&file, &data).expect("tampering with the layer");

    let reference = format!("{}/demo:v1", registry.addr);
    let out = node.peer(&["image", "pull", &reference]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "tampered pull succeeded");
    assert!(stderr.contains(&format!("sha256:{layer}")), "error does not name the layer: {stderr}");
    assert!(images(&node).is_empty(), "image ls after a refused pull: {:?}", images(&node));
    let blobs = node.data.join("images/blobs/sha256");
    assert!(!blobs.join(&layer).exists(), "the tampered layer entered the store");
    assert!(std::fs::read_dir(node.data.join("images/tmp")).expect("tmp").next().is_none());
}

#[test]
fn wrong_credentials_are_named() {
    if !require_root("wrong_credentials_are_named") {
        return;
    }
    let registry = Registry::start("auth", Some(("alice", "right-password")));
    registry.push_demo("demo:v1", Some("alice:right-password"));
    let node = node_without_demo("auth");
    let reference = format!("{}/demo:v1", registry.addr);
    let write_creds = |path: &Path, password: &str| {
        let auth = base64(&format!("alice:{password}"));
        let json = format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, registry.addr);
        std::fs::write(path, json).expect("writing credentials");
    };
    let creds = node.dir.join("registry-auth.json");
    write_creds(&creds, "wrong-password");
    let out = node.peer(&["image", "pull", "--credentials", &creds.display().to_string(), &reference]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "pull with wrong credentials succeeded");
    let expected = format!("registry {} refused the credentials for demo: 401", registry.addr);
    assert!(stderr.contains(&expected), "expected {expected:?} in: {stderr}");

    // Anonymous is refused the same way; the right password pulls.
    let out = node.peer(&["image", "pull", &reference]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&expected), "anonymous pull: {out:?}");
    write_creds(&creds, "right-password");
    node.peer_ok(&["image", "pull", "--credentials", &creds.display().to_string(), &reference]);
    assert!(images(&node).contains(&reference));
}

/// Standard base64 with padding, enough for a credentials file.
fn base64(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One pod of `image` on every node.
fn daemonset(name: &str, image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: {name}}}\nspec:\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n        - name: main\n          image: {image}\n          resources:\n            limits: {{cpu: \"100m\", memory: \"32Mi\"}}\n"
    )
}

#[test]
fn peers_start_the_image_with_the_registry_stopped() {
    if !require_root("peers_start_the_image_with_the_registry_stopped") {
        return;
    }
    let mut registry = Registry::start("p2p", None);
    registry.push_demo("demo:v1", None);
    let reference = format!("{}/demo:v1", registry.addr);
    let nodes = cluster(&["p2p-a", "p2p-b", "p2p-c"]);
    for node in &nodes {
        node.peer_ok(&["image", "rm", "peer-demo:latest"]);
    }
    // The first node pulls from the registry; then the registry goes away.
    nodes[0].peer_ok(&["image", "pull", &reference]);
    registry.stop();
    // Its agent advertises the new blobs within a tick; gossip carries them in a moment.
    std::thread::sleep(Duration::from_secs(4));
    nodes[0].write_spec("agents.yaml", &daemonset("agents", &reference));
    for node in &nodes {
        wait_for(&format!("the image to run on {}", node.name), Duration::from_secs(90), || {
            node.running_pods().into_iter().next()
        });
        assert!(images(node).contains(&reference), "{}: image ls: {:?}", node.name, images(node));
    }
    for node in &nodes[1..] {
        let log = node.agent_log();
        assert!(
            log.contains("fetched a blob from a peer"),
            "{} fetched nothing from a peer:\n{log}",
            node.name
        );
        assert!(
            log.contains("using the manifest a peer holds for the tag"),
            "{} did not resolve the tag at a peer:\n{log}",
            node.name
        );
    }
}

/// A Deployment of one replica of `image` with extra pod spec lines (`imagePullSecrets`)
/// and container lines (`imagePullPolicy`), each already indented.
fn deployment_with(name: &str, image: &str, pod_lines: &str, container_lines: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: 1\n  template:\n    spec:\n      terminationGracePeriodSeconds: 1\n{pod_lines}      containers:\n        - name: main\n          image: {image}\n{container_lines}          resources:\n            limits: {{cpu: \"100m\", memory: \"32Mi\"}}\n"
    )
}

/// A `kubernetes.io/dockerconfigjson` Secret with `user:password` for `registry`.
fn registry_secret(name: &str, registry: &str, user: &str, password: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{{\"auths\": {{\"{registry}\": {{\"username\": \"{user}\", \"password\": \"{password}\"}}}}}}'\n"
    )
}

/// The first pod this node runs, once it has one.
fn first_pod(node: &Node) -> String {
    wait_for("a pod on the node", Duration::from_secs(30), || {
        node.pods().into_iter().find_map(|p| p["name"].as_str().map(str::to_owned))
    })
}

/// The pod's first container's state, as `peer describe pod` shows it.
fn container_state(node: &Node, pod: &str) -> serde_json::Value {
    node.describe(pod)["containers"][0]["state"].clone()
}

/// The pod's events with `reason`, as `peer describe pod` shows them: their messages.
fn events(node: &Node, pod: &str, reason: &str) -> Vec<String> {
    tests::event_messages(&node.describe(pod), reason)
}

#[test]
fn image_pull_secrets_authenticate_the_pull() {
    if !require_root("image_pull_secrets_authenticate_the_pull") {
        return;
    }
    let registry = Registry::start("secret", Some(("alice", "right-password")));
    registry.push_demo("demo:v1", Some("alice:right-password"));
    let mut node = node_without_demo("secret");
    node.start_agent();
    let reference = format!("{}/demo:v1", registry.addr);
    let pull_secrets = "      imagePullSecrets: [{name: regcred}]\n";

    // The Secret is not there yet: the kubelet's warning, then the registry's 401.
    node.write_spec("web.yaml", &deployment_with("web", &reference, pull_secrets, ""));
    let pod = first_pod(&node);
    let waiting = wait_for("ImagePullBackOff naming the 401", Duration::from_secs(60), || {
        let state = container_state(&node, &pod);
        (state["waiting"]["reason"] == "ImagePullBackOff").then_some(state)
    });
    let message = waiting["waiting"]["message"].as_str().unwrap_or_default().to_owned();
    let refused = format!("registry {} refused the credentials for demo: 401", registry.addr);
    assert!(message.contains(&refused), "waiting message: {message}");
    let warned = events(&node, &pod, "FailedToRetrieveImagePullSecret");
    assert!(
        warned.iter().any(|m| m.contains("Unable to retrieve some image pull secrets (regcred)")),
        "events: {}",
        node.describe(&pod)["events"]
    );
    assert!(events(&node, &pod, "Failed").iter().any(|m| m.contains(&refused)));
    assert!(!events(&node, &pod, "BackOff").is_empty(), "no BackOff event");

    // Once the Secret exists, the next attempt pulls with its credentials.
    node.write_spec("regcred.yaml", &registry_secret("regcred", &registry.addr, "alice", "right-password"));
    let listed = wait_for("peer get secrets to list it", Duration::from_secs(20), || {
        Some(node.peer_ok(&["get", "secrets"])).filter(|l| l.contains("regcred"))
    });
    assert!(listed.contains("kubernetes.io/dockerconfigjson"), "{listed}");
    let described = node.peer_ok(&["describe", "secret", "regcred"]);
    assert!(described.contains("bytes") && !described.contains("right-password"), "{described}");
    let running = wait_for("the pod to run with the secret's credentials", Duration::from_secs(120), || {
        node.running_pods().into_iter().next()
    });
    let pulled = events(&node, &running, "Pulled");
    assert!(
        pulled.iter().any(|m| m.starts_with(&format!("Successfully pulled image {reference:?} in"))
            && m.contains("Image size: ")),
        "Pulled events: {pulled:?}"
    );
    assert!(images(&node).contains(&reference), "image ls: {:?}", images(&node));

    // `peer apply`, `get -o json` (values base64-encoded, as kubectl), `delete secret`.
    let extra = node.dir.join("extra.yaml");
    std::fs::write(
        &extra,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: extra}\nstringData: {token: s3cr3t}\n",
    )
    .expect("writing extra.yaml");
    node.peer_ok(&["apply", "-f", &extra.display().to_string()]);
    let listed = node.json(&["get", "secrets"]);
    let extra_json = listed.as_array().into_iter().flatten().find(|s| s["metadata"]["name"] == "extra");
    let extra_json = extra_json.expect("peer get secrets -o json lists extra");
    assert_eq!(extra_json["type"], "Opaque");
    assert_eq!(extra_json["data"]["token"], base64("s3cr3t"));
    let described = node.peer_ok(&["describe", "secret", "extra"]);
    assert!(described.contains("token: 6 bytes") && !described.contains("s3cr3t"), "{described}");
    node.peer_ok(&["delete", "secret", "extra"]);
    assert!(!node.peer_ok(&["get", "secrets"]).contains("extra"));
    assert!(!node.agent_log().contains("right-password"), "a secret value reached the agent's log");
}

#[test]
fn never_policy_does_not_pull_an_absent_image() {
    if !require_root("never_policy_does_not_pull_an_absent_image") {
        return;
    }
    let registry = Registry::start("never", None);
    registry.push_demo("demo:v1", None);
    let mut node = node_without_demo("never");
    node.start_agent();
    let reference = format!("{}/demo:v1", registry.addr);
    let never = "          imagePullPolicy: Never\n";
    node.write_spec("web.yaml", &deployment_with("web", &reference, "", never));
    let pod = first_pod(&node);
    let state = wait_for("ErrImageNeverPull", Duration::from_secs(60), || {
        let state = container_state(&node, &pod);
        (state["waiting"]["reason"] == "ErrImageNeverPull").then_some(state)
    });
    let message = state["waiting"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("is not present with pull policy of Never"), "{message}");
    assert!(!events(&node, &pod, "ErrImageNeverPull").is_empty(), "no ErrImageNeverPull event");
    assert!(events(&node, &pod, "Pulling").is_empty(), "a pull started");
    assert!(images(&node).is_empty(), "image ls: {:?}", images(&node));
    assert!(node.peer_ok(&["get", "pods"]).contains("ErrImageNeverPull"));
}

#[test]
fn always_policy_restarts_from_the_local_copy_when_the_registry_is_gone() {
    if !require_root("always_policy_restarts_from_the_local_copy_when_the_registry_is_gone") {
        return;
    }
    let registry = Registry::start("always", None);
    registry.push_demo("demo:v1", None);
    let mut node = node_without_demo("always");
    node.start_agent();
    let reference = format!("{}/demo:v1", registry.addr);
    let always = "          imagePullPolicy: Always\n";
    node.write_spec("web.yaml", &deployment_with("web", &reference, "", always));
    let pod = wait_for("the pod to run", Duration::from_secs(90), || node.running_pods().into_iter().next());
    assert!(!events(&node, &pod, "Pulling").is_empty(), "no Pulling event");
    assert!(node.describe(&pod)["containers"][0]["imagePullPolicy"] == "Always");

    // The registry goes away (a node cut off from its uplink); the container dies.
    let mut registry = registry;
    registry.stop();
    assert!(node.kill_containers() > 0, "no container process to kill");
    wait_for("the container to restart from the local copy", Duration::from_secs(90), || {
        let described = node.describe(&pod);
        let restarted = described["containers"][0]["restartCount"].as_u64().unwrap_or(0) >= 1;
        (restarted && described["containers"][0]["state"]["running"].is_object()).then_some(())
    });
    let warned = events(&node, &pod, "RegistryUnreachable");
    assert!(
        warned.iter().any(|m| m.contains("the copy already on this node starts")),
        "events: {}",
        node.describe(&pod)["events"]
    );
}

#[test]
fn a_secret_applied_on_one_node_authenticates_pulls_on_another() {
    if !require_root("a_secret_applied_on_one_node_authenticates_pulls_on_another") {
        return;
    }
    let registry = Registry::start("secret-cluster", Some(("alice", "right-password")));
    registry.push_demo("demo:v1", Some("alice:right-password"));
    let reference = format!("{}/demo:v1", registry.addr);
    let nodes = cluster(&["sec-a", "sec-b"]);
    // The Secret and the workload are written on the first node only; the desired state
    // carries both to the second, whose pull needs the credentials for the tag.
    let with_secrets = daemonset("agents", &reference)
        .replace("    spec:\n", "    spec:\n      imagePullSecrets: [{name: regcred}]\n");
    let secret = registry_secret("regcred", &registry.addr, "alice", "right-password");
    nodes[0].write_spec("agents.yaml", &format!("{secret}---\n{with_secrets}"));
    for node in &nodes {
        wait_for(&format!("the image to run on {}", node.name), Duration::from_secs(120), || {
            node.running_pods().into_iter().next()
        });
        assert!(images(node).contains(&reference), "{}: image ls: {:?}", node.name, images(node));
        let secrets = node.peer_ok(&["get", "secrets"]);
        assert!(secrets.contains("regcred"), "{}: {secrets}", node.name);
    }
}
