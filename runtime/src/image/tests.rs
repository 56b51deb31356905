//! Store-level tests: layouts and archives are built here byte by byte, then imported.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use serde_json::{json, Value};

use super::blob::{unique_suffix, Digest};
use super::layout::host_platform;
use super::{ImageError, ImageStore};

/// A scratch directory removed on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "peer-image-{name}-{}-{}",
            std::process::id(),
            unique_suffix()
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub(super) fn join(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One entry of a test layer.
enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    /// A file whose name is written into the header verbatim, bypassing the tar crate's
    /// refusal to create hostile names.
    RawName(&'a str),
}

fn layer(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o755);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        let result = match entry {
            Entry::Dir(path) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                builder.append_data(&mut header, path, &[][..])
            }
            Entry::File(path, data) => {
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, *data)
            }
            Entry::Symlink(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                builder.append_link(&mut header, path, target)
            }
            Entry::Hardlink(path, target) => {
                header.set_entry_type(tar::EntryType::Link);
                header.set_size(0);
                builder.append_link(&mut header, path, target)
            }
            Entry::RawName(name) => {
                header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
                header.set_size(4);
                header.set_cksum();
                builder.append(&header, &b"evil"[..])
            }
        };
        result.expect("append tar entry");
    }
    builder.into_inner().expect("finish tar")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

/// Writes `data` as a blob of the OCI layout in `dir` and returns its descriptor.
pub(super) fn put_blob(dir: &Path, media_type: &str, data: &[u8]) -> Value {
    let digest = Digest::of(data);
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).expect("create blobs dir");
    fs::write(blobs.join(digest.hex()), data).expect("write blob");
    json!({ "mediaType": media_type, "digest": digest.as_str(), "size": data.len() })
}

fn config_json(diff_ids: Vec<String>, cmd: &str) -> Vec<u8> {
    let (_, arch) =
        host_platform().split_once('/').map(|(os, a)| (os.to_owned(), a.to_owned())).expect("os/arch");
    serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "created": "2024-01-02T03:04:05Z",
        "config": { "Cmd": [cmd], "Env": ["PATH=/bin"], "WorkingDir": "/app", "User": "1000" },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .expect("encode config")
}

/// Writes an image (layers gzipped if asked) into the layout at `dir`; returns the manifest
/// descriptor and the image id.
pub(super) fn put_image(dir: &Path, layers: &[Vec<u8>], gzipped: bool, cmd: &str) -> (Value, String) {
    let diff_ids = layers.iter().map(|l| Digest::of(l).to_string()).collect();
    let layer_descriptors: Vec<Value> = layers
        .iter()
        .map(|l| match gzipped {
            true => put_blob(dir, "application/vnd.oci.image.layer.v1.tar+gzip", &gzip(l)),
            false => put_blob(dir, "application/vnd.oci.image.layer.v1.tar", l),
        })
        .collect();
    let config = put_blob(dir, "application/vnd.oci.image.config.v1+json", &config_json(diff_ids, cmd));
    let id = config["digest"].as_str().expect("digest").to_owned();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": layer_descriptors,
    });
    let manifest = serde_json::to_vec(&manifest).expect("encode manifest");
    (put_blob(dir, "application/vnd.oci.image.manifest.v1+json", &manifest), id)
}

fn put_index(dir: &Path, manifests: Vec<Value>) {
    let index = json!({ "schemaVersion": 2, "manifests": manifests });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).expect("encode")).expect("write index");
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("write oci-layout");
}

fn annotated(mut descriptor: Value, annotations: Value) -> Value {
    descriptor["annotations"] = annotations;
    descriptor
}

/// Tars the contents of `dir` into `out`.
fn tar_dir(dir: &Path, out: &Path) {
    let mut builder = tar::Builder::new(fs::File::create(out).expect("create tar"));
    builder.append_dir_all(".", dir).expect("tar dir");
    builder.finish().expect("finish tar");
}

pub(super) fn base_layer() -> Vec<u8> {
    layer(&[
        Entry::Dir("bin"),
        Entry::File("bin/sh", b"#!shell"),
        Entry::Symlink("bin/link", "sh"),
        Entry::Hardlink("bin/hard", "bin/sh"),
    ])
}

pub(super) fn app_layer(content: &[u8]) -> Vec<u8> {
    layer(&[Entry::Dir("app"), Entry::File("app/main", content)])
}

fn import_err(store: &ImageStore, path: &Path) -> String {
    match store.import(path) {
        Ok(images) => panic!("import of {} succeeded: {images:?}", path.display()),
        Err(err) => err.to_string(),
    }
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn imports_oci_layout_directory() {
    let tmp = TempDir::new("oci-dir");
    let layout = tmp.join("layout");
    let (manifest, id) = put_image(&layout, &[base_layer(), app_layer(b"v2")], true, "/app/main");
    put_index(
        &layout,
        vec![annotated(
            manifest,
            json!({ "org.opencontainers.image.ref.name": "registry.example:5000/app:v2" }),
        )],
    );
    let store = ImageStore::open(&tmp.join("store")).expect("open store");

    let imported = store.import(&layout).expect("import");
    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0].reference.as_deref(), Some("registry.example:5000/app:v2"));
    assert_eq!(imported[0].id, id);
    assert_eq!(store.list().expect("list"), imported);

    let image = store.resolve("registry.example:5000/app:v2").expect("resolve");
    assert_eq!(image.id, id);
    assert_eq!(image.config.cmd, ["/app/main"]);
    assert_eq!(image.config.env, ["PATH=/bin"]);
    assert_eq!(image.config.working_dir.as_deref(), Some("/app"));
    assert_eq!(image.config.user.as_deref(), Some("1000"));
    let [base, app] = &image.layers[..] else { panic!("two layers expected: {image:?}") };
    assert_eq!(fs::read(base.join("bin/sh")).expect("read sh"), b"#!shell");
    assert_eq!(fs::read_link(base.join("bin/link")).expect("read link"), Path::new("sh"));
    let ino = |p: &Path| fs::metadata(p).expect("stat").ino();
    assert_eq!(ino(&base.join("bin/hard")), ino(&base.join("bin/sh")));
    assert_eq!(fs::metadata(base.join("bin/sh")).expect("stat").mode() & 0o7777, 0o755);
    assert_eq!(fs::read(app.join("app/main")).expect("read main"), b"v2");
    assert_eq!(store.resolve(&id).expect("resolve by id").layers, image.layers);

    // Importing again changes nothing.
    assert_eq!(store.import(&layout).expect("reimport"), imported);
}

#[test]
fn imports_oci_layout_tar_named_by_containerd_annotation() {
    let tmp = TempDir::new("oci-tar");
    let layout = tmp.join("layout");
    let (manifest, id) = put_image(&layout, &[base_layer()], false, "/bin/sh");
    put_index(
        &layout,
        vec![annotated(
            manifest,
            json!({
                "org.opencontainers.image.ref.name": "v1",
                "io.containerd.image.name": "docker.io/library/web:v1",
            }),
        )],
    );
    let archive = tmp.join("web.tar");
    tar_dir(&layout, &archive);
    let store = ImageStore::open(&tmp.join("store")).expect("open store");

    let imported = store.import(&archive).expect("import");
    assert_eq!(imported[0].reference.as_deref(), Some("docker.io/library/web:v1"));
    let image = store.resolve("web:v1").expect("resolve");
    assert_eq!(image.id, id);
    assert_eq!(image.reference, "docker.io/library/web:v1");
}

#[test]
fn bare_tag_without_repository_imports_by_id_only() {
    let tmp = TempDir::new("oci-id-only");
    let layout = tmp.join("layout");
    let (manifest, id) = put_image(&layout, &[base_layer()], false, "/bin/sh");
    put_index(&layout, vec![annotated(manifest, json!({ "org.opencontainers.image.ref.name": "v1" }))]);
    let store = ImageStore::open(&tmp.join("store")).expect("open store");

    let imported = store.import(&layout).expect("import");
    assert_eq!((imported[0].reference.clone(), imported[0].id.clone()), (None, id.clone()));
    assert!(store.resolve(&id).is_ok());
    assert!(matches!(store.resolve("v1"), Err(ImageError::NotFound { .. })));
}

#[test]
fn image_index_picks_the_host_platform() {
    let tmp = TempDir::new("oci-multi");
    let layout = tmp.join("layout");
    let (host, host_id) = put_image(&layout, &[app_layer(b"host")], true, "host");
    let (other, _) = put_image(&layout, &[app_layer(b"other")], true, "other");
    let (_, arch) =
        host_platform().split_once('/').map(|(o, a)| (o.to_owned(), a.to_owned())).expect("os/arch");
    let foreign = if arch == "s390x" { "riscv64" } else { "s390x" };
    let mut foreign_manifest = other.clone();
    foreign_manifest["platform"] = json!({ "os": "linux", "architecture": foreign });
    let mut host_manifest = host;
    host_manifest["platform"] = json!({ "os": "linux", "architecture": arch });
    let nested = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [foreign_manifest.clone(), host_manifest],
    });
    let nested = put_blob(
        &layout,
        "application/vnd.oci.image.index.v1+json",
        &serde_json::to_vec(&nested).expect("encode"),
    );
    // A top-level manifest for another platform is skipped, not imported.
    put_index(
        &layout,
        vec![
            annotated(nested, json!({ "org.opencontainers.image.ref.name": "docker.io/library/multi:1" })),
            annotated(
                foreign_manifest,
                json!({ "org.opencontainers.image.ref.name": "docker.io/library/foreign:1" }),
            ),
        ],
    );
    let store = ImageStore::open(&tmp.join("store")).expect("open store");

    let imported = store.import(&layout).expect("import");
    assert_eq!(imported.len(), 1);
    let image = store.resolve("multi:1").expect("resolve");
    assert_eq!((image.id, image.config.cmd), (host_id, vec!["host".to_owned()]));
}

#[test]
fn imports_gzipped_docker_save_archive() {
    let tmp = TempDir::new("docker-save");
    let base = base_layer();
    let app = app_layer(b"api");
    let base_hex = Digest::of(&base).hex().to_owned();
    let app_hex = Digest::of(&app).hex().to_owned();
    let base_config = config_json(vec![Digest::of(&base).to_string()], "/bin/sh");
    let api_config =
        config_json(vec![Digest::of(&base).to_string(), Digest::of(&app).to_string()], "/app/main");
    let manifest = json!([
        { "Config": format!("{}.json", Digest::of(&base_config).hex()), "RepoTags": ["base"], "Layers": [format!("{base_hex}/layer.tar")] },
        { "Config": format!("{}.json", Digest::of(&api_config).hex()), "RepoTags": ["api:v2"], "Layers": ["shared/layer.tar", format!("{app_hex}/layer.tar")] },
    ]);
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        builder.append_data(&mut header, path, data).expect("append");
    };
    add("manifest.json", &serde_json::to_vec(&manifest).expect("encode"));
    add(&format!("{}.json", Digest::of(&base_config).hex()), &base_config);
    add(&format!("{}.json", Digest::of(&api_config).hex()), &api_config);
    add(&format!("{base_hex}/layer.tar"), &base);
    add(&format!("{app_hex}/layer.tar"), &app);
    // Docker links a layer shared between images instead of storing it twice.
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    builder
        .append_link(&mut header, "shared/layer.tar", format!("../{base_hex}/layer.tar"))
        .expect("append link");
    let archive = tmp.join("images.tar.gz");
    fs::write(&archive, gzip(&builder.into_inner().expect("finish"))).expect("write archive");
    let store = ImageStore::open(&tmp.join("store")).expect("open store");

    let mut refs: Vec<_> =
        store.import(&archive).expect("import").into_iter().filter_map(|s| s.reference).collect();
    refs.sort();
    assert_eq!(refs, ["docker.io/library/api:v2", "docker.io/library/base:latest"]);
    let api = store.resolve("docker.io/library/api:v2").expect("resolve");
    assert_eq!(api.layers.len(), 2);
    assert_eq!(api.layers[0], store.resolve("base").expect("resolve base").layers[0]);
    assert_eq!(fs::read(api.layers[1].join("app/main")).expect("read"), b"api");
    assert_eq!(dir_names(&tmp.join("store/layers")), {
        let mut v = vec![base_hex, app_hex];
        v.sort();
        v
    });
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    if !nix::unistd::geteuid().is_root() {
        // Creating device nodes and trusted.* xattrs needs root; CI and dev machines are root.
        eprintln!("skipping whiteouts_become_overlay_whiteouts: not root");
        return;
    }
    let tmp = TempDir::new("whiteout");
    let layout = tmp.join("layout");
    let upper = layer(&[
        Entry::File(".wh.gone", b""),
        Entry::Dir("etc"),
        Entry::File("etc/.wh..wh..opq", b""),
        Entry::File("etc/keep", b"k"),
        Entry::File("same", b"s"),
        Entry::File(".wh.same", b""),
    ]);
    let (manifest, _) = put_image(&layout, &[base_layer(), upper], true, "/bin/sh");
    put_index(
        &layout,
        vec![annotated(manifest, json!({ "org.opencontainers.image.ref.name": "docker.io/library/wh:1" }))],
    );
    let store = ImageStore::open(&tmp.join("store")).expect("open store");
    store.import(&layout).expect("import");

    let top = store.resolve("wh:1").expect("resolve").layers[1].clone();
    let gone = fs::symlink_metadata(top.join("gone")).expect("whiteout exists");
    assert!(gone.file_type().is_char_device());
    assert_eq!(gone.rdev(), 0);
    assert!(!top.join(".wh.gone").exists());
    let opaque = xattr::get(top.join("etc"), "trusted.overlay.opaque").expect("get xattr");
    assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
    assert!(!top.join("etc/.wh..wh..opq").exists());
    assert_eq!(fs::read(top.join("etc/keep")).expect("read keep"), b"k");
    // A whiteout does not hide a file from its own layer.
    assert_eq!(fs::read(top.join("same")).expect("read same"), b"s");
}

#[test]
fn tampered_blob_is_refused() {
    let tmp = TempDir::new("tampered");
    let layout = tmp.join("layout");
    let (manifest, _) = put_image(&layout, &[app_layer(b"good")], false, "/app/main");
    put_index(
        &layout,
        vec![annotated(manifest, json!({ "org.opencontainers.image.ref.name": "docker.io/library/t:1" }))],
    );
    let layer_digest = Digest::of(&app_layer(b"good"));
    fs::write(layout.join("blobs/sha256").join(layer_digest.hex()), app_layer(b"evil")).expect("tamper");
    let store = ImageStore::open(&tmp.join("store")).expect("open store");

    let err = import_err(&store, &layout);
    assert!(err.contains(&format!("blob {layer_digest} does not match its digest")), "{err}");
    assert_eq!(store.list().expect("list"), []);
    assert_eq!(dir_names(&tmp.join("store/blobs/sha256")), Vec::<String>::new());
}

#[test]
fn diff_id_mismatch_is_refused() {
    let tmp = TempDir::new("diff-id");
    let layout = tmp.join("layout");
    let (manifest, _) = put_image(&layout, &[app_layer(b"x")], true, "/app/main");
    put_index(&layout, vec![manifest]);
    // Rewrite the config to claim another diff id; the blob digests stay honest.
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).expect("read")).expect("json");
    let manifest_hex =
        index["manifests"][0]["digest"].as_str().expect("digest")["sha256:".len()..].to_owned();
    let mut manifest: Value =
        serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(manifest_hex)).expect("read"))
            .expect("json");
    let wrong = Digest::of(b"wrong").to_string();
    manifest["config"] =
        put_blob(&layout, "application/vnd.oci.image.config.v1+json", &config_json(vec![wrong.clone()], "x"));
    let manifest = put_blob(
        &layout,
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).expect("encode"),
    );
    put_index(&layout, vec![manifest]);
    let store = ImageStore::open(&tmp.join("store")).expect("open store");

    let err = import_err(&store, &layout);
    assert!(err.contains(&format!("does not match diff id {wrong}")), "{err}");
    assert_eq!(dir_names(&tmp.join("store/layers")), Vec::<String>::new());
}

#[test]
fn hostile_layer_paths_are_refused() {
    let tmp = TempDir::new("traversal");
    let outside = tmp.join("outside");
    fs::create_dir(&outside).expect("create outside");
    let outside_str = outside.to_str().expect("utf-8 path");
    let hostile = [
        ("dotdot", layer(&[Entry::RawName("../../escape")]), "path escapes the layer"),
        (
            "symlink",
            layer(&[Entry::Symlink("evil", outside_str), Entry::File("evil/pwned", b"x")]),
            "leads outside the layer",
        ),
        ("hardlink", layer(&[Entry::Hardlink("passwd", "/etc/passwd")]), "outside of destination"),
    ];
    for (name, hostile_layer, expected) in hostile {
        let layout = tmp.join(name);
        let (manifest, _) = put_image(&layout, &[hostile_layer], false, "x");
        put_index(
            &layout,
            vec![annotated(
                manifest,
                json!({ "org.opencontainers.image.ref.name": "docker.io/library/h:1" }),
            )],
        );
        let store = ImageStore::open(&tmp.join("store")).expect("open store");
        let err = import_err(&store, &layout);
        assert!(err.contains(expected), "{name}: {err}");
        assert_eq!(dir_names(&tmp.join("store/layers")), Vec::<String>::new(), "{name}");
        assert_eq!(dir_names(&outside), Vec::<String>::new(), "{name}");
    }
    assert!(!tmp.join("escape").exists() && !tmp.0.parent().expect("parent").join("escape").exists());
}

#[test]
fn remove_deletes_unreferenced_layers_and_blobs() {
    let tmp = TempDir::new("remove");
    let layout = tmp.join("layout");
    let (a, _) = put_image(&layout, &[base_layer(), app_layer(b"a")], true, "a");
    let (b, b_id) = put_image(&layout, &[base_layer(), app_layer(b"b")], true, "b");
    put_index(
        &layout,
        vec![
            annotated(a, json!({ "org.opencontainers.image.ref.name": "docker.io/library/a:1" })),
            annotated(b, json!({ "org.opencontainers.image.ref.name": "docker.io/library/b:1" })),
        ],
    );
    let store = ImageStore::open(&tmp.join("store")).expect("open store");
    store.import(&layout).expect("import");
    let layer_dir = |content: &[u8]| tmp.join("store/layers").join(Digest::of(&app_layer(content)).hex());
    let base_dir = tmp.join("store/layers").join(Digest::of(&base_layer()).hex());
    assert_eq!(dir_names(&tmp.join("store/layers")).len(), 3);
    assert_eq!(dir_names(&tmp.join("store/blobs/sha256")).len(), 7);

    store.remove("a:1").expect("remove a");
    assert!(!layer_dir(b"a").exists());
    assert!(layer_dir(b"b").is_dir() && base_dir.is_dir());
    assert_eq!(dir_names(&tmp.join("store/blobs/sha256")).len(), 4);
    let err = store.resolve("a:1").map(|_| ()).expect_err("a is gone");
    assert_eq!(err.to_string(), "image a:1 not found in the local store");

    store.remove(&b_id).expect("remove b by id");
    assert_eq!(dir_names(&tmp.join("store/layers")), Vec::<String>::new());
    assert_eq!(dir_names(&tmp.join("store/blobs/sha256")), Vec::<String>::new());
    assert_eq!(store.list().expect("list"), []);
    assert!(matches!(store.remove("b:1"), Err(ImageError::NotFound { .. })));
}

#[test]
fn concurrent_imports_into_one_store_both_succeed() {
    let tmp = TempDir::new("concurrent");
    let layout = tmp.join("layout");
    let (manifest, _) = put_image(&layout, &[base_layer(), app_layer(b"c")], true, "c");
    put_index(
        &layout,
        vec![annotated(manifest, json!({ "org.opencontainers.image.ref.name": "docker.io/library/c:1" }))],
    );
    let store_dir = tmp.join("store");
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| ImageStore::open(&store_dir).and_then(|s| s.import(&layout))))
            .collect();
        for handle in handles {
            handle.join().expect("thread").expect("import");
        }
    });
    let store = ImageStore::open(&store_dir).expect("open store");
    assert_eq!(store.resolve("c:1").expect("resolve").layers.len(), 2);
}

#[test]
fn collect_images_removes_an_image_and_its_own_layers_but_keeps_shared_ones() {
    use super::gc::{self, GcPolicy};
    use std::collections::BTreeSet;

    let tmp = TempDir::new("collect");
    let layout = tmp.join("layout");
    let (a, a_id) = put_image(&layout, &[base_layer(), app_layer(b"a")], true, "a");
    let (b, b_id) = put_image(&layout, &[base_layer(), app_layer(b"b")], true, "b");
    put_index(
        &layout,
        vec![
            annotated(a.clone(), json!({ "org.opencontainers.image.ref.name": "docker.io/library/a:1" })),
            annotated(a, json!({ "org.opencontainers.image.ref.name": "docker.io/library/a:2" })),
            annotated(b, json!({ "org.opencontainers.image.ref.name": "docker.io/library/b:1" })),
        ],
    );
    let store = ImageStore::open(&tmp.join("store")).expect("open store");
    store.import(&layout).expect("import");
    let layer_dir = |content: &[u8]| tmp.join("store/layers").join(Digest::of(&app_layer(content)).hex());
    let base_dir = tmp.join("store/layers").join(Digest::of(&base_layer()).hex());

    // b runs; references resolve to ids whichever way they are spelled.
    let in_use = store.ids_of(["b:1", "docker.io/library/nothing:1", "not a reference"]).expect("ids");
    assert_eq!(in_use, BTreeSet::from([b_id.clone()]));
    let now = super::store::now_ms();
    assert!(store.mark_used(&in_use, now).expect("mark used"));
    assert!(!store.mark_used(&in_use, now).expect("mark used again"), "nothing changed: no write");
    let listed = store.list().expect("list");
    let b_row = listed.iter().find(|i| i.id == b_id).expect("b listed");
    assert_eq!(b_row.last_used_ms, Some(now));
    assert!(listed.iter().filter(|i| i.id == a_id).all(|i| i.last_used_ms.is_none() && i.added_ms.is_some()));

    // An hour on, a is past a max age of a minute and goes with both its tags.
    let later = now + 3_600_000;
    let images = store.gc_images(false, later).expect("gc images");
    let policy = GcPolicy { max_age: std::time::Duration::from_secs(60), ..GcPolicy::default() };
    let input = gc::GcInput {
        images: &images,
        in_use: &in_use,
        spare: &BTreeSet::new(),
        usage: gc::FsUsage::default(),
    };
    let plan = gc::plan(&input, &policy, later);
    assert_eq!(plan.deletions.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), [a_id.as_str()]);
    assert_eq!(plan.deletions[0].names, ["docker.io/library/a:1", "docker.io/library/a:2"]);
    let done = store.collect_images(&plan).expect("collect");
    assert_eq!(done.len(), 1);
    assert!(!layer_dir(b"a").exists());
    assert!(layer_dir(b"b").is_dir() && base_dir.is_dir(), "the base layer b shares stays");
    assert_eq!(dir_names(&tmp.join("store/blobs/sha256")).len(), 4, "b's manifest, config and two layers");
    let refs: Vec<_> = store.list().expect("list").into_iter().filter_map(|i| i.reference).collect();
    assert_eq!(refs, ["docker.io/library/b:1"]);
    assert!(store.resolve("b:1").is_ok());

    // A plan made before the image was used again is not carried out.
    let images = store.gc_images(true, later).expect("gc images");
    assert!(images[0].parts.iter().any(|(key, bytes)| key.starts_with("layer:") && *bytes > 0));
    let stale = gc::plan_all(&images, &BTreeSet::new(), later);
    assert!(store.mark_used(&in_use, later).expect("mark used"));
    assert_eq!(store.collect_images(&stale).expect("collect"), []);
    assert!(store.resolve("b:1").is_ok());
    assert!(store.fs_usage().expect("usage").total > 0);
}

#[test]
fn stamps_from_a_clock_not_yet_set_are_replaced_once_it_is() {
    let tmp = TempDir::new("stamps");
    let layout = tmp.join("layout");
    let (manifest, id) = put_image(&layout, &[app_layer(b"s")], false, "s");
    put_index(&layout, vec![annotated(manifest, json!({ "org.opencontainers.image.ref.name": "s:1" }))]);
    let store = ImageStore::open(&tmp.join("store")).expect("open store");
    store.import(&layout).expect("import");
    let ids = std::collections::BTreeSet::from([id.clone()]);
    // Booted without a real-time clock: 1970 plus a few seconds.
    assert!(store.mark_used(&ids, 5_000).expect("mark used"));
    let last_used = || store.list().expect("list")[0].last_used_ms;
    assert_eq!(last_used(), Some(5_000));
    // NTP caught up: the image was not unused for 56 years, it was used just now.
    let now = super::store::now_ms();
    assert!(store.mark_used(&std::collections::BTreeSet::new(), now).expect("mark used"));
    assert_eq!(last_used(), Some(now));
}
