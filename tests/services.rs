//! Services across nodes that are separate test hosts (network namespaces made by the
//! test): pod networking, service addresses and DNS names, load balancing over ready
//! endpoints cluster-wide.

use std::time::Duration;

use tests::{cluster_on, require_root, TestNet};

#[test]
fn nodes_on_separate_test_hosts_form_a_cluster() {
    if !require_root("nodes_on_separate_test_hosts_form_a_cluster") {
        return;
    }
    let mut net = TestNet::new("svc");
    let nodes = cluster_on(&mut net, &["sa", "sb", "sc"]);
    tests::apply(&nodes[0], "api.yaml", &tests::deployment("api", 3));
    tests::wait_for("3 replicas across the hosts", Duration::from_secs(60), || {
        let n: usize = nodes.iter().map(|n| n.running_pods().len()).sum();
        (n == 3).then_some(())
    });
}
