//! Every example under `specs/` parses without errors, so what users copy works, and the
//! examples cover every kind peer implements from a spec folder.

use std::collections::BTreeSet;
use std::path::Path;

use protocol::spec::Kind;

#[test]
fn every_file_under_specs_parses_without_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs");
    // The folder and its subfolders: examples that need something of the user's (a
    // registry) sit one level down, out of the folder `scripts/run-node` runs.
    let entries = |dir: &Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .expect("the specs folder is readable")
            .map(|entry| entry.expect("a specs folder entry").path())
            .collect()
    };
    let mut files: Vec<_> = entries(&dir)
        .into_iter()
        .flat_map(|path| if path.is_dir() { entries(&path) } else { vec![path] })
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .yaml or .yml files in {}", dir.display());

    let mut errors = Vec::new();
    let mut kinds = BTreeSet::new();
    for path in &files {
        let name = path
            .strip_prefix(dir.parent().expect("specs has a parent"))
            .unwrap_or(path)
            .display()
            .to_string();
        let text = std::fs::read_to_string(path).expect("a spec file is readable UTF-8");
        let result = node::manifest::parse_file(&name, &text);
        errors.extend(result.errors().map(ToString::to_string));
        assert!(result.objects().next().is_some(), "{name} defines no object");
        kinds.extend(result.objects().map(|o| o.kind()));
        for warning in result.warnings() {
            println!("warning: {warning}");
        }
    }
    assert!(errors.is_empty(), "errors in specs/:\n{}", errors.join("\n"));
    for kind in [
        Kind::Deployment,
        Kind::StatefulSet,
        Kind::DaemonSet,
        Kind::Service,
        Kind::PodDisruptionBudget,
        Kind::HorizontalPodAutoscaler,
        Kind::Secret,
    ] {
        assert!(kinds.contains(&kind), "no example {kind} in specs/");
    }
}
