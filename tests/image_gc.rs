//! Image garbage collection with a real agent: `peer image prune [--all]` through the
//! agent, and the periodic pass that deletes an image no workload names once it is
//! unused past `--image-gc-max-age`, while the image a running Deployment uses stays.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tests::{require_root, wait_for, Node};

/// An image no workload names.
const OTHER: &str = "docker.io/library/gc-other:1";
/// An image only a Deployment scaled to zero names: spared past the maximum age.
const SPARED: &str = "docker.io/library/gc-spared:1";

/// Writes `data` as a blob of the OCI layout at `dir`; returns its digest hex.
fn put_blob(dir: &Path, data: &[u8]) -> String {
    let tmp = dir.join("blob.tmp");
    std::fs::write(&tmp, data).expect("writing blob");
    let out = Command::new("sha256sum").arg(&tmp).output().expect("running sha256sum");
    assert!(out.status.success(), "sha256sum failed");
    let hex = String::from_utf8_lossy(&out.stdout).split_whitespace().next().expect("a digest").to_owned();
    std::fs::rename(&tmp, dir.join("blobs/sha256").join(&hex)).expect("storing blob");
    hex
}

/// A tiny image of its own (one layer with one file naming it, so its id differs from
/// every other image's), written as an OCI layout directory tagged `reference`.
fn tiny_image(dir: &Path, name: &str, reference: &str) -> std::path::PathBuf {
    let layout = dir.join(format!("{name}-layout"));
    let rootfs = dir.join(format!("{name}-rootfs"));
    std::fs::create_dir_all(layout.join("blobs/sha256")).expect("creating layout");
    std::fs::create_dir_all(&rootfs).expect("creating rootfs");
    std::fs::write(rootfs.join("hello.txt"), format!("image {name}\n")).expect("writing file");
    let layer = dir.join(format!("{name}-layer.tar"));
    let status = Command::new("tar")
        .args(["--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner", "-C"])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg(".")
        .status()
        .expect("running tar");
    assert!(status.success(), "tar failed");
    let layer_bytes = std::fs::read(&layer).expect("reading layer");
    let layer_hex = put_blob(&layout, &layer_bytes);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = format!(
        r#"{{"architecture":"{arch}","os":"linux","config":{{"Cmd":["/hello.txt"]}},"rootfs":{{"type":"layers","diff_ids":["sha256:{layer_hex}"]}}}}"#
    );
    let config_hex = put_blob(&layout, config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{config_hex}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{layer_hex}","size":{}}}]}}"#,
        config.len(),
        layer_bytes.len()
    );
    let manifest_hex = put_blob(&layout, manifest.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{manifest_hex}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"{reference}"}}}}]}}"#,
        manifest.len()
    );
    std::fs::write(layout.join("index.json"), index).expect("writing index.json");
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("writing oci-layout");
    layout
}

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: main
          image: peer-demo:latest
"#;

/// A Deployment of no replicas: it names `SPARED`, yet runs nothing.
const SCALED_TO_ZERO: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: standby}
spec:
  replicas: 0
  selector: {matchLabels: {app: standby}}
  template:
    metadata: {labels: {app: standby}}
    spec:
      containers:
        - name: main
          image: gc-spared:1
"#;

fn image_refs(node: &Node) -> String {
    node.peer_ok(&["image", "ls"])
}

#[test]
fn unused_images_are_collected_and_images_in_use_stay() {
    if !require_root("unused_images_are_collected_and_images_in_use_stay") {
        return;
    }
    let mut node = Node::prepare("imagegc");
    let layout = tiny_image(&node.dir, "other", OTHER);
    let spared = tiny_image(&node.dir, "spared", SPARED);
    let import = node.peer_ok(&["image", "import", &layout.display().to_string()]);
    assert!(import.contains(OTHER), "imported the other image: {import}");
    // First an agent that collects on its own only once an hour: prune runs on request.
    // Disk pressure is off (high threshold 100) so a full test machine changes nothing.
    node.agent_args =
        ["--image-gc-period", "1h", "--image-gc-high-threshold", "100"].map(str::to_owned).to_vec();
    node.start_agent();
    node.write_spec("web.yaml", DEPLOYMENT);
    wait_for("the web pod to run", Duration::from_secs(60), || {
        (node.running_pods().len() == 1).then_some(())
    });

    // A plain pass spares a fresh image (minimum age 2m); --all takes every image not in use.
    let out = node.peer_ok(&["image", "prune"]);
    assert!(out.contains("no image removed"), "{out}");
    assert!(image_refs(&node).contains(OTHER));
    let out = node.peer_ok(&["image", "prune", "--all"]);
    assert!(out.contains(&format!("removed {OTHER}")) && out.contains("peer image prune --all"), "{out}");
    let ls = image_refs(&node);
    assert!(!ls.contains(OTHER), "{ls}");
    let demo_row = ls.lines().find(|l| l.contains("peer-demo:latest")).expect("the demo image stays");
    assert!(demo_row.ends_with(" ago"), "the demo image was seen in use: {demo_row}");

    // Then an agent that collects every second: an image unused for 3 s that no workload
    // names goes by itself; the demo image, in use, stays.
    node.stop_agent();
    // The spared image is added first: unused longer, it would go no later than the other.
    node.peer_ok(&["image", "import", &spared.display().to_string()]);
    node.peer_ok(&["image", "import", &layout.display().to_string()]);
    node.write_spec("standby.yaml", SCALED_TO_ZERO);
    node.agent_args = [
        "--image-gc-period",
        "1s",
        "--image-gc-max-age",
        "3s",
        "--image-gc-min-age",
        "0s",
        "--image-gc-high-threshold",
        "100",
    ]
    .map(str::to_owned)
    .to_vec();
    node.start_agent();
    wait_for("the unnamed image to be collected", Duration::from_secs(30), || {
        (!image_refs(&node).contains(OTHER)).then_some(())
    });
    // The spared image, unused for longer, was past the maximum age in that pass too.
    let ls = image_refs(&node);
    assert!(ls.contains("peer-demo:latest"), "the image in use stays: {ls}");
    assert!(ls.contains(SPARED), "the image a workload names stays: {ls}");
    let events = node.json(&["get", "events"]);
    // The prune above recorded one event for the image, the periodic pass another.
    let removed = events
        .as_array()
        .expect("events")
        .iter()
        .find(|e| {
            let message = e["message"].as_str().unwrap_or_default();
            e["reason"] == "ImageGarbageCollected"
                && message.contains(OTHER)
                && message.contains("maximum age 3s")
        })
        .unwrap_or_else(|| {
            panic!("an ImageGarbageCollected event for {OTHER} past the maximum age: {events:#}")
        });
    assert_eq!(removed["object"], format!("node/{}", node.name));
    assert_eq!(node.running_pods().len(), 1, "the pod kept running");
}
