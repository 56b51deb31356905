//! Snapshot tests of manifest parsing; refresh with `UPDATE_EXPECT=1 cargo test -p node manifest`.

use std::fmt::Write;

use expect_test::{expect, Expect};

use super::{parse_file, DocResult, FileResult};

/// Renders everything parsing found: workloads as JSON, warnings and errors as displayed.
fn render(result: &FileResult) -> String {
    let mut out = String::new();
    if let Some(error) = &result.syntax_error {
        writeln!(out, "syntax error: {error}").expect("writing to a String");
    }
    for doc in &result.documents {
        match doc {
            DocResult::Object { workload, warnings } => {
                let json = serde_json::to_string_pretty(workload).expect("a workload is JSON");
                writeln!(out, "object: {json}").expect("writing to a String");
                for warning in warnings {
                    writeln!(out, "warning: {warning}").expect("writing to a String");
                }
            }
            DocResult::Ignored { kind, name, warning } => {
                writeln!(out, "ignored: {kind} {name:?}").expect("writing to a String");
                writeln!(out, "warning: {warning}").expect("writing to a String");
            }
            DocResult::Invalid { key, error } => {
                let key = key.as_ref().map(ToString::to_string);
                writeln!(out, "invalid: {key:?}").expect("writing to a String");
                writeln!(out, "error: {error}").expect("writing to a String");
            }
        }
    }
    out
}

/// Parses `yaml` as `test.yaml` and compares the whole result with the snapshot.
fn check(yaml: &str, expect: Expect) {
    expect.assert_eq(&render(&parse_file("test.yaml", yaml)));
}

/// Like [`check`], but only the warnings and errors, for tests about messages.
fn check_messages(yaml: &str, expect: Expect) {
    let result = parse_file("test.yaml", yaml);
    let mut out = String::new();
    for warning in result.warnings() {
        writeln!(out, "warning: {warning}").expect("writing to a String");
    }
    for error in result.errors() {
        writeln!(out, "error: {error}").expect("writing to a String");
    }
    expect.assert_eq(&out);
}

#[test]
fn seed_example() {
    check(
        include_str!("testdata/seed-api.yaml"),
        expect![[r#"
            object: {
              "key": {
                "kind": "Deployment",
                "namespace": "default",
                "name": "api"
              },
              "labels": {},
              "replicas": 5,
              "selector": {
                "app": "api"
              },
              "strategy": {
                "RollingUpdate": {
                  "max_surge": {
                    "Int": 1
                  },
                  "max_unavailable": {
                    "Int": 0
                  }
                }
              },
              "template": {
                "labels": {
                  "app": "api"
                },
                "containers": [
                  {
                    "name": "api",
                    "image": "api:v2",
                    "command": [],
                    "args": [],
                    "env": [],
                    "working_dir": null,
                    "ports": [],
                    "resources": {
                      "requests": {
                        "cpu_millis": 100,
                        "memory_bytes": 134217728
                      },
                      "limits": {
                        "cpu_millis": 500,
                        "memory_bytes": 536870912
                      }
                    }
                  }
                ],
                "restart_policy": "Always",
                "termination_grace_period_seconds": 30,
                "host_network": false,
                "scheduling": {
                  "node_selector": {},
                  "tolerations": [],
                  "required_affinity": [],
                  "preferred_affinity": [],
                  "anti_affinity_by_hostname": false,
                  "topology_spread": null
                }
              },
              "pod_management": "OrderedReady"
            }
            warning: test.yaml: document 1 (Deployment api): spec.strategy: rolling updates are not implemented by peer yet: a changed template replaces all replicas at once, as with Recreate
        "#]],
    );
}

#[test]
fn full_deployment() {
    check(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {team: store}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  strategy: {type: Recreate}
  template:
    metadata:
      labels: {app: web, tier: front}
    spec:
      hostNetwork: true
      restartPolicy: Always
      terminationGracePeriodSeconds: 10
      containers:
        - name: web
          image: peer-demo:latest
          command: ["/peer-demo"]
          args: ["serve"]
          workingDir: /srv
          env:
            - {name: PORT, value: "9090"}
            - {name: EMPTY}
          ports:
            - {containerPort: 9090, name: http}
            - {containerPort: 5353, protocol: UDP, hostPort: 5353}
          resources:
            limits: {cpu: 0.5, memory: 1Gi}
        - name: sidecar
          image: busybox:latest
          resources:
            requests: {cpu: "1", memory: "500M"}
"#,
        expect![[r#"
            object: {
              "key": {
                "kind": "Deployment",
                "namespace": "shop",
                "name": "web"
              },
              "labels": {
                "team": "store"
              },
              "replicas": 2,
              "selector": {
                "app": "web"
              },
              "strategy": "Recreate",
              "template": {
                "labels": {
                  "app": "web",
                  "tier": "front"
                },
                "containers": [
                  {
                    "name": "web",
                    "image": "peer-demo:latest",
                    "command": [
                      "/peer-demo"
                    ],
                    "args": [
                      "serve"
                    ],
                    "env": [
                      {
                        "name": "PORT",
                        "value": "9090"
                      },
                      {
                        "name": "EMPTY",
                        "value": ""
                      }
                    ],
                    "working_dir": "/srv",
                    "ports": [
                      {
                        "name": "http",
                        "container_port": 9090,
                        "protocol": "Tcp",
                        "host_port": null
                      },
                      {
                        "name": null,
                        "container_port": 5353,
                        "protocol": "Udp",
                        "host_port": 5353
                      }
                    ],
                    "resources": {
                      "requests": {
                        "cpu_millis": 500,
                        "memory_bytes": 1073741824
                      },
                      "limits": {
                        "cpu_millis": 500,
                        "memory_bytes": 1073741824
                      }
                    }
                  },
                  {
                    "name": "sidecar",
                    "image": "busybox:latest",
                    "command": [],
                    "args": [],
                    "env": [],
                    "working_dir": null,
                    "ports": [],
                    "resources": {
                      "requests": {
                        "cpu_millis": 1000,
                        "memory_bytes": 500000000
                      },
                      "limits": {
                        "cpu_millis": null,
                        "memory_bytes": null
                      }
                    }
                  }
                ],
                "restart_policy": "Always",
                "termination_grace_period_seconds": 10,
                "host_network": true,
                "scheduling": {
                  "node_selector": {},
                  "tolerations": [],
                  "required_affinity": [],
                  "preferred_affinity": [],
                  "anti_affinity_by_hostname": false,
                  "topology_spread": null
                }
              },
              "pod_management": "OrderedReady"
            }
        "#]],
    );
}

#[test]
fn pod() {
    check(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: once
  labels: {job: once}
spec:
  restartPolicy: OnFailure
  containers:
    - name: main
      image: peer-demo:latest
"#,
        expect![[r#"
            object: {
              "key": {
                "kind": "Pod",
                "namespace": "default",
                "name": "once"
              },
              "labels": {
                "job": "once"
              },
              "replicas": 1,
              "selector": {
                "job": "once"
              },
              "strategy": "Recreate",
              "template": {
                "labels": {
                  "job": "once"
                },
                "containers": [
                  {
                    "name": "main",
                    "image": "peer-demo:latest",
                    "command": [],
                    "args": [],
                    "env": [],
                    "working_dir": null,
                    "ports": [],
                    "resources": {
                      "requests": {
                        "cpu_millis": null,
                        "memory_bytes": null
                      },
                      "limits": {
                        "cpu_millis": null,
                        "memory_bytes": null
                      }
                    }
                  }
                ],
                "restart_policy": "OnFailure",
                "termination_grace_period_seconds": 30,
                "host_network": false,
                "scheduling": {
                  "node_selector": {},
                  "tolerations": [],
                  "required_affinity": [],
                  "preferred_affinity": [],
                  "anti_affinity_by_hostname": false,
                  "topology_spread": null
                }
              },
              "pod_management": "OrderedReady"
            }
        "#]],
    );
}

#[test]
fn one_bad_document_does_not_stop_the_others() {
    check_messages(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: first}
spec:
  containers: [{name: main, image: peer-demo:latest}]
---
# An empty document is skipped, but still counted.
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: broken}
spec:
  template:
    spec:
      containers: [{name: main}]
---
apiVersion: v1
kind: Pod
metadata: {name: last}
spec:
  containers: [{name: main, image: peer-demo:latest}]
"#,
        expect![[r#"
            error: test.yaml: document 3 (Deployment broken): spec.template.spec.containers[0].image: required field is missing, expected a container image such as peer-demo:latest
        "#]],
    );
    let result = parse_file("test.yaml", "kind: Pod\napiVersion: v1\nmetadata: {name: a}\nspec: {containers: [{name: a, image: x}]}\n---\nkind: Pod\n");
    let names: Vec<_> = result.workloads().map(|w| w.key.name.as_str()).collect();
    assert_eq!(names, ["a"]);
    assert_eq!(result.documents.len(), 2);
}

#[test]
fn yaml_syntax_error_reports_the_line() {
    check(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: api\n spec: {}\n",
        expect![[r#"
            syntax error: test.yaml: line 5 column 2: did not find expected key, while parsing a block mapping
        "#]],
    );
}

#[test]
fn wrong_type_names_the_field_and_line() {
    check(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  replicas: five
"#,
        expect![[r#"
            invalid: Some("Deployment/default/api")
            error: test.yaml: document 1 (Deployment api), line 6 column 13: spec.replicas: expected an integer, got string "five"
        "#]],
    );
}

#[test]
fn bad_quantity_names_the_field() {
    check_messages(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: api}
spec:
  containers:
    - name: api
      image: peer-demo:latest
      resources: {limits: {memory: 12XB}}
"#,
        expect![[r#"
            error: test.yaml: document 1 (Pod api): spec.containers[0].resources.limits.memory: expected a quantity such as 500m, 0.5, 128Mi or 1Gi, got "12XB" (unknown suffix)
        "#]],
    );
}

#[test]
fn missing_image() {
    check(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  template:
    spec:
      containers: [{name: api}]
"#,
        expect![[r#"
            invalid: Some("Deployment/default/api")
            error: test.yaml: document 1 (Deployment api): spec.template.spec.containers[0].image: required field is missing, expected a container image such as peer-demo:latest
        "#]],
    );
}

#[test]
fn selector_must_match_template_labels() {
    check_messages(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: api, image: peer-demo:latest}]
"#,
        expect![[r#"
            error: test.yaml: document 1 (Deployment api): spec.template.metadata.labels: selector does not match template labels: the selector needs app: api
        "#]],
    );
}

#[test]
fn unimplemented_and_unknown_fields_are_warned_about() {
    check_messages(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
  annotations: {owner: me}
  creationTimestamp: null
spec:
  replica: 3
  revisionHistoryLimit: 5
  selector:
    matchLabels: {app: api}
    matchExpressions: [{key: tier, operator: Exists}]
  template:
    metadata: {labels: {app: api}}
    spec:
      volumes: [{name: data, emptyDir: {}}]
      nodeSelector: {}
      containers:
        - name: api
          image: peer-demo:latest
          imagee: typo
          imagePullPolicy: IfNotPresent
          livenessProbe: {httpGet: {path: /, port: 8080}}
          env:
            - name: POD
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
          resources:
            limits: {nvidia.com/gpu: 1, cpu: 1}
status: {}
"#,
        expect![[r#"
            warning: test.yaml: document 1 (Deployment api): metadata.annotations: peer does not read annotations yet, ignored
            warning: test.yaml: document 1 (Deployment api): spec.replica: unknown field, ignored (not part of the Kubernetes API peer knows)
            warning: test.yaml: document 1 (Deployment api): spec.revisionHistoryLimit: not implemented by peer yet, ignored
            warning: test.yaml: document 1 (Deployment api): spec.selector.matchExpressions: not implemented by peer yet, ignored: pods are selected by matchLabels, or by the template labels when there are none
            warning: test.yaml: document 1 (Deployment api): spec.template.spec.volumes: not implemented by peer yet, ignored
            warning: test.yaml: document 1 (Deployment api): spec.template.spec.containers[0].imagee: unknown field, ignored (not part of the Kubernetes API peer knows)
            warning: test.yaml: document 1 (Deployment api): spec.template.spec.containers[0].imagePullPolicy: not implemented by peer yet, ignored
            warning: test.yaml: document 1 (Deployment api): spec.template.spec.containers[0].livenessProbe: not implemented by peer yet, ignored
            warning: test.yaml: document 1 (Deployment api): spec.template.spec.containers[0].env[0].valueFrom: not implemented by peer yet: the variable is not set
            warning: test.yaml: document 1 (Deployment api): status: status is written by the cluster, not read from manifests; ignored
            warning: test.yaml: document 1 (Deployment api): spec.template.spec.containers[0].resources.limits["nvidia.com/gpu"]: resource "nvidia.com/gpu" is not implemented by peer yet, ignored (only cpu and memory are)
        "#]],
    );
}

#[test]
fn other_kinds_are_ignored_with_a_warning() {
    check_messages(
        r#"
apiVersion: v1
kind: Service
metadata: {name: api}
spec:
  ports: [{port: 80}]
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w}
"#,
        expect![[r#"
            warning: test.yaml: document 1 (Service api): kind: peer does not run Service objects yet, ignored
            warning: test.yaml: document 2 (Widget w): kind: unknown kind "Widget", ignored: peer runs Deployment and Pod objects
        "#]],
    );
}

#[test]
fn kubernetes_rules_are_enforced() {
    check_messages(
        r#"
apiVersion: extensions/v1beta1
kind: Deployment
metadata: {name: old}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: never}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: a, image: peer-demo:latest}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ../etc}
---
apiVersion: v1
kind: Pod
metadata: {name: greedy}
spec:
  containers:
    - name: a
      image: peer-demo:latest
      resources: {requests: {cpu: 2}, limits: {cpu: 1}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: stuck}
spec:
  strategy: {rollingUpdate: {maxSurge: 0, maxUnavailable: 0}}
  template:
    spec:
      containers: [{name: a, image: peer-demo:latest}]
---
kind: Pod
apiVersion: v1
metadata: {name: twins}
spec:
  containers: [{name: a, image: x}, {name: a, image: y}]
---
- not
- an object
---
metadata: {name: nokind}
"#,
        expect![[r#"
            error: test.yaml: document 1 (Deployment old): apiVersion: expected apps/v1 for kind Deployment, got "extensions/v1beta1"
            error: test.yaml: document 2 (Deployment never): spec.template.spec.restartPolicy: expected Always for a Deployment, got "Never"
            error: test.yaml: document 3 (Deployment ../etc): metadata.name: expected lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters, got "../etc"
            error: test.yaml: document 4 (Pod greedy): spec.containers[0].resources.requests.cpu: must be less than or equal to the cpu limit
            error: test.yaml: document 5 (Deployment stuck): spec.strategy.rollingUpdate.maxUnavailable: may not be 0 when maxSurge is 0
            error: test.yaml: document 6 (Pod twins): spec.containers[1].name: duplicate container name "a"
            error: test.yaml: document 7: expected a Kubernetes object (a mapping with apiVersion, kind and metadata)
            error: test.yaml: document 8: kind: required field is missing, expected a string such as Deployment or Pod
        "#]],
    );
}
