//! Snapshot tests of manifest parsing; refresh with `UPDATE_EXPECT=1 cargo test -p node manifest`.

use std::collections::BTreeMap;
use std::fmt::Write;

use expect_test::{expect, Expect};
use protocol::spec::{IntOrPercent, Object, PodManagement, Strategy};

use super::{parse_file, DocResult, FileResult};

/// Renders everything parsing found: workloads as JSON, warnings and errors as displayed.
fn render(result: &FileResult) -> String {
    let mut out = String::new();
    if let Some(error) = &result.syntax_error {
        writeln!(out, "syntax error: {error}").expect("writing to a String");
    }
    for doc in &result.documents {
        match doc {
            DocResult::Object { object, warnings } => {
                let json = match object {
                    Object::Workload(w) => serde_json::to_string_pretty(w),
                    Object::Service(s) => serde_json::to_string_pretty(s),
                    Object::PodDisruptionBudget(b) => serde_json::to_string_pretty(b),
                    Object::HorizontalPodAutoscaler(a) => serde_json::to_string_pretty(a),
                    Object::AutoscalerStatus(s) => serde_json::to_string_pretty(s),
                    Object::Secret(s) => serde_json::to_string_pretty(s),
                }
                .expect("an object is JSON");
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
pub(super) fn check(yaml: &str, expect: Expect) {
    expect.assert_eq(&render(&parse_file("test.yaml", yaml)));
}

/// Like [`check`], but only the warnings and errors, for tests about messages.
pub(super) fn check_messages(yaml: &str, expect: Expect) {
    let result = parse_file("test.yaml", yaml);
    let mut out = String::new();
    render_messages(&result, &mut out);
    expect.assert_eq(&out);
}

/// Like [`check`], but of each workload only its scheduling, then warnings and errors.
fn check_scheduling(yaml: &str, expect: Expect) {
    let result = parse_file("test.yaml", yaml);
    let mut out = String::new();
    for workload in result.workloads() {
        let json = serde_json::to_string_pretty(&workload.template.scheduling).expect("scheduling is JSON");
        writeln!(out, "{}: {json}", workload.key).expect("writing to a String");
    }
    render_messages(&result, &mut out);
    expect.assert_eq(&out);
}

fn render_messages(result: &FileResult, out: &mut String) {
    for warning in result.warnings() {
        writeln!(out, "warning: {warning}").expect("writing to a String");
    }
    for error in result.errors() {
        writeln!(out, "error: {error}").expect("writing to a String");
    }
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
                    },
                    "probes": {
                      "liveness": null,
                      "readiness": null,
                      "startup": null
                    },
                    "pre_stop": null,
                    "image_pull_policy": null
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
                },
                "image_pull_secrets": []
              },
              "pod_management": "OrderedReady",
              "rollout": {
                "min_ready_seconds": 0,
                "progress_deadline_seconds": 600,
                "revision_history_limit": 10,
                "paused": false,
                "change_cause": null,
                "revision": 0,
                "history": []
              }
            }
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
                    },
                    "probes": {
                      "liveness": null,
                      "readiness": null,
                      "startup": null
                    },
                    "pre_stop": null,
                    "image_pull_policy": null
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
                    },
                    "probes": {
                      "liveness": null,
                      "readiness": null,
                      "startup": null
                    },
                    "pre_stop": null,
                    "image_pull_policy": null
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
                },
                "image_pull_secrets": []
              },
              "pod_management": "OrderedReady",
              "rollout": {
                "min_ready_seconds": 0,
                "progress_deadline_seconds": 600,
                "revision_history_limit": 10,
                "paused": false,
                "change_cause": null,
                "revision": 0,
                "history": []
              }
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
                    },
                    "probes": {
                      "liveness": null,
                      "readiness": null,
                      "startup": null
                    },
                    "pre_stop": null,
                    "image_pull_policy": null
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
                },
                "image_pull_secrets": []
              },
              "pod_management": "OrderedReady",
              "rollout": {
                "min_ready_seconds": 0,
                "progress_deadline_seconds": 600,
                "revision_history_limit": 10,
                "paused": false,
                "change_cause": null,
                "revision": 0,
                "history": []
              }
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
          livenessProbe: {httpGet: {path: /, port: 8080}, perodSeconds: 5}
          env:
            - name: POD
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
          resources:
            limits: {nvidia.com/gpu: 1, cpu: 1}
status: {}
"#,
        expect![[r#"
            warning: test.yaml: document 1 (Deployment api): metadata.annotations.owner: peer reads no annotation but a Deployment's kubernetes.io/change-cause, ignored
            warning: test.yaml: document 1 (Deployment api): spec.replica: unknown field, ignored (not part of the Kubernetes API peer knows)
            warning: test.yaml: document 1 (Deployment api): spec.selector.matchExpressions: not implemented by peer yet, ignored: pods are selected by matchLabels, or by the template labels when there are none
            warning: test.yaml: document 1 (Deployment api): spec.template.spec.volumes: not implemented by peer yet, ignored
            warning: test.yaml: document 1 (Deployment api): spec.template.spec.containers[0].imagee: unknown field, ignored (not part of the Kubernetes API peer knows)
            warning: test.yaml: document 1 (Deployment api): spec.template.spec.containers[0].livenessProbe.perodSeconds: unknown field, ignored (not part of the Kubernetes API peer knows)
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
kind: ConfigMap
metadata: {name: api}
data: {a: b}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w}
"#,
        expect![[r#"
            warning: test.yaml: document 1 (ConfigMap api): kind: peer does not implement ConfigMap objects yet, ignored
            warning: test.yaml: document 2 (Widget w): kind: unknown kind "Widget", ignored: peer implements Deployment, StatefulSet, DaemonSet, Pod, Service, PodDisruptionBudget, HorizontalPodAutoscaler and Secret objects
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

#[test]
fn scheduling_fields_are_converted() {
    check_scheduling(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  template:
    metadata: {labels: {app: web, tier: front}}
    spec:
      containers: [{name: web, image: peer-demo:latest}]
      nodeSelector: {disk: ssd, kubernetes.io/arch: amd64}
      tolerations:
        - {key: dedicated, operator: Equal, value: web, effect: NoSchedule}
        - {key: spot, operator: Exists, effect: PreferNoSchedule}
        - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 60}
        - {key: flaky, value: "yes"}
        - {operator: Exists}
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
              - matchExpressions:
                  - {key: topology.kubernetes.io/zone, operator: In, values: [a, b]}
                  - {key: old, operator: DoesNotExist}
              - matchExpressions:
                  - {key: gpu, operator: Exists}
                  - {key: pool, operator: NotIn, values: [batch]}
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 80
              preference:
                matchExpressions: [{key: disk, operator: In, values: [nvme]}]
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100
              podAffinityTerm:
                topologyKey: kubernetes.io/hostname
                labelSelector:
                  matchExpressions: [{key: app, operator: In, values: [web]}]
      topologySpreadConstraints:
        - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: web}}}
"#,
        expect![[r#"
            Deployment/default/web: {
              "node_selector": {
                "disk": "ssd",
                "kubernetes.io/arch": "amd64"
              },
              "tolerations": [
                {
                  "key": "dedicated",
                  "operator": "Equal",
                  "value": "web",
                  "effect": "NoSchedule",
                  "toleration_seconds": null
                },
                {
                  "key": "spot",
                  "operator": "Exists",
                  "value": "",
                  "effect": "PreferNoSchedule",
                  "toleration_seconds": null
                },
                {
                  "key": "node.kubernetes.io/unreachable",
                  "operator": "Exists",
                  "value": "",
                  "effect": "NoExecute",
                  "toleration_seconds": 60
                },
                {
                  "key": "flaky",
                  "operator": "Equal",
                  "value": "yes",
                  "effect": null,
                  "toleration_seconds": null
                },
                {
                  "key": "",
                  "operator": "Exists",
                  "value": "",
                  "effect": null,
                  "toleration_seconds": null
                }
              ],
              "required_affinity": [
                {
                  "match_expressions": [
                    {
                      "key": "topology.kubernetes.io/zone",
                      "operator": "In",
                      "values": [
                        "a",
                        "b"
                      ]
                    },
                    {
                      "key": "old",
                      "operator": "DoesNotExist",
                      "values": []
                    }
                  ]
                },
                {
                  "match_expressions": [
                    {
                      "key": "gpu",
                      "operator": "Exists",
                      "values": []
                    },
                    {
                      "key": "pool",
                      "operator": "NotIn",
                      "values": [
                        "batch"
                      ]
                    }
                  ]
                }
              ],
              "preferred_affinity": [
                {
                  "weight": 80,
                  "preference": {
                    "match_expressions": [
                      {
                        "key": "disk",
                        "operator": "In",
                        "values": [
                          "nvme"
                        ]
                      }
                    ]
                  }
                }
              ],
              "anti_affinity_by_hostname": true,
              "topology_spread": {
                "topology_key": "topology.kubernetes.io/zone",
                "max_skew": 1
              }
            }
        "#]],
    );
}

#[test]
fn scheduling_of_a_bare_pod() {
    check_scheduling(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: once, labels: {job: once}}
spec:
  containers: [{name: main, image: peer-demo:latest}]
  nodeSelector: {zone: a}
  tolerations: [{key: gpu, operator: Exists}]
  topologySpreadConstraints:
    - {maxSkew: 2, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule}
"#,
        expect![[r#"
            Pod/default/once: {
              "node_selector": {
                "zone": "a"
              },
              "tolerations": [
                {
                  "key": "gpu",
                  "operator": "Exists",
                  "value": "",
                  "effect": null,
                  "toleration_seconds": null
                }
              ],
              "required_affinity": [],
              "preferred_affinity": [],
              "anti_affinity_by_hostname": false,
              "topology_spread": {
                "topology_key": "kubernetes.io/hostname",
                "max_skew": 2
              }
            }
        "#]],
    );
}

#[test]
fn scheduling_fields_peer_does_not_implement_are_warned_about() {
    check_scheduling(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: peer-demo:latest}]
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
              - matchExpressions: [{key: zone, operator: In, values: [a]}]
                matchFields: [{key: metadata.name, operator: In, values: [n1]}]
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 10
              preference:
                matchFields: [{key: metadata.name, operator: In, values: [n2]}]
        podAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            - topologyKey: kubernetes.io/hostname
              labelSelector: {matchLabels: {app: cache}}
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            - topologyKey: kubernetes.io/hostname
              labelSelector: {matchLabels: {app: web}}
            - topologyKey: topology.kubernetes.io/zone
              labelSelector: {matchLabels: {app: web}}
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 50
              podAffinityTerm:
                topologyKey: kubernetes.io/hostname
                labelSelector: {matchLabels: {app: db}}
            - weight: 50
              podAffinityTerm:
                topologyKey: kubernetes.io/hostname
                labelSelector: {matchLabels: {app: web}}
                namespaces: [other]
      topologySpreadConstraints:
        - {maxSkew: 1, topologyKey: zone, whenUnsatisfiable: ScheduleAnyway}
        - {maxSkew: 1, topologyKey: zone, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: other}}}
        - {maxSkew: 2, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, minDomains: 2}
---
apiVersion: v1
kind: Pod
metadata: {name: pinned}
spec:
  containers: [{name: main, image: peer-demo:latest}]
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
          - matchExpressions: [{key: zone, operator: In, values: [a]}]
          - matchFields: [{key: metadata.name, operator: In, values: [n1]}]
"#,
        expect![[r#"
            Deployment/default/web: {
              "node_selector": {},
              "tolerations": [],
              "required_affinity": [
                {
                  "match_expressions": [
                    {
                      "key": "zone",
                      "operator": "In",
                      "values": [
                        "a"
                      ]
                    }
                  ]
                }
              ],
              "preferred_affinity": [],
              "anti_affinity_by_hostname": true,
              "topology_spread": {
                "topology_key": "zone",
                "max_skew": 1
              }
            }
            Pod/default/pinned: {
              "node_selector": {},
              "tolerations": [],
              "required_affinity": [],
              "preferred_affinity": [],
              "anti_affinity_by_hostname": false,
              "topology_spread": null
            }
            warning: test.yaml: document 1 (Deployment web): spec.template.spec.affinity.podAffinity: not implemented by peer yet, ignored
            warning: test.yaml: document 1 (Deployment web): spec.template.spec.topologySpreadConstraints[2].minDomains: not implemented by peer yet, ignored
            warning: test.yaml: document 1 (Deployment web): spec.template.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchFields: not implemented by peer yet, ignored: only matchExpressions on node labels are read
            warning: test.yaml: document 1 (Deployment web): spec.template.spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].preference.matchFields: not implemented by peer yet, ignored: only matchExpressions on node labels are read
            warning: test.yaml: document 1 (Deployment web): spec.template.spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]: peer spreads replicas over nodes softly: when there are more replicas than nodes, some share a node instead of staying pending
            warning: test.yaml: document 1 (Deployment web): spec.template.spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[1]: not implemented by peer yet, ignored: peer only spreads a workload's own replicas over nodes (topologyKey kubernetes.io/hostname with a labelSelector that selects this pod's labels, and no namespaces, namespaceSelector, matchLabelKeys or mismatchLabelKeys)
            warning: test.yaml: document 1 (Deployment web): spec.template.spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0]: not implemented by peer yet, ignored: peer only spreads a workload's own replicas over nodes (topologyKey kubernetes.io/hostname with a labelSelector that selects this pod's labels, and no namespaces, namespaceSelector, matchLabelKeys or mismatchLabelKeys)
            warning: test.yaml: document 1 (Deployment web): spec.template.spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[1]: not implemented by peer yet, ignored: peer only spreads a workload's own replicas over nodes (topologyKey kubernetes.io/hostname with a labelSelector that selects this pod's labels, and no namespaces, namespaceSelector, matchLabelKeys or mismatchLabelKeys)
            warning: test.yaml: document 1 (Deployment web): spec.template.spec.topologySpreadConstraints[0]: not implemented by peer yet, ignored: peer applies only a whenUnsatisfiable: DoNotSchedule constraint
            warning: test.yaml: document 1 (Deployment web): spec.template.spec.topologySpreadConstraints[1].labelSelector: peer spreads the replicas of this workload only: a labelSelector that does not select this pod's labels is not implemented, ignored
            warning: test.yaml: document 1 (Deployment web): spec.template.spec.topologySpreadConstraints[2]: not implemented by peer yet, ignored: peer applies only the first DoNotSchedule constraint (spec.template.spec.topologySpreadConstraints[1])
            warning: test.yaml: document 2 (Pod pinned): spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[1].matchFields: not implemented by peer yet, ignored: only matchExpressions on node labels are read; this term has no matchExpressions, so it matches every node and the required node affinity has no effect
        "#]],
    );
}

#[test]
fn bad_scheduling_values_name_the_field() {
    let pod = |spec: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers: [{{name: a, image: peer-demo:latest}}]\n{spec}")
    };
    let affinity = |term: &str| {
        pod(&format!("  affinity:\n    nodeAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n        nodeSelectorTerms:\n          - matchExpressions: [{term}]\n"))
    };
    let docs = [
        affinity("{key: cores, operator: Gt, values: ['4']}"),
        affinity("{key: zone, operator: Near, values: [a]}"),
        affinity("{key: zone, operator: In}"),
        affinity("{key: zone, operator: Exists, values: [a]}"),
        pod("  affinity:\n    nodeAffinity:\n      preferredDuringSchedulingIgnoredDuringExecution:\n        - {weight: 0, preference: {matchExpressions: [{key: zone, operator: In, values: [a]}]}}\n"),
        pod("  affinity:\n    nodeAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: []}\n"),
        pod("  affinity:\n    podAntiAffinity:\n      preferredDuringSchedulingIgnoredDuringExecution:\n        - {weight: 101, podAffinityTerm: {topologyKey: kubernetes.io/hostname}}\n"),
        pod("  affinity:\n    podAntiAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n        - {topologyKey: kubernetes.io/hostname, labelSelector: {matchExpressions: [{key: app, operator: Gt, values: ['1']}]}}\n"),
        pod("  topologySpreadConstraints: [{maxSkew: 0, topologyKey: zone, whenUnsatisfiable: DoNotSchedule}]\n"),
        pod("  topologySpreadConstraints: [{maxSkew: 1, topologyKey: zone, whenUnsatisfiable: Never}]\n"),
        pod("  tolerations: [{key: gpu, operator: Exists, effect: NoEvict}]\n"),
        pod("  tolerations: [{key: gpu, operator: Lt, value: '3'}]\n"),
        pod("  tolerations: [{operator: Equal, value: x}]\n"),
        pod("  tolerations: [{key: gpu, operator: Exists, value: x}]\n"),
        pod("  tolerations: [{key: gpu, effect: NoSchedule, tolerationSeconds: 30}]\n"),
    ];
    check_messages(
        &docs.join("---\n"),
        expect![[r#"
            error: test.yaml: document 1 (Pod p): spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator: expected In, NotIn, Exists or DoesNotExist, got "Gt": peer does not implement the numeric operators Gt and Lt
            error: test.yaml: document 2 (Pod p): spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator: expected In, NotIn, Exists or DoesNotExist, got "Near"
            error: test.yaml: document 3 (Pod p): spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values: required for operator In, expected at least one value
            error: test.yaml: document 4 (Pod p): spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values: expected no values for operator Exists
            error: test.yaml: document 5 (Pod p): spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight: expected an integer from 1 to 100, got 0
            error: test.yaml: document 6 (Pod p): spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms: expected at least one node selector term
            error: test.yaml: document 7 (Pod p): spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight: expected an integer from 1 to 100, got 101
            error: test.yaml: document 8 (Pod p): spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].labelSelector.matchExpressions[0].operator: expected In, NotIn, Exists or DoesNotExist, got "Gt": peer does not implement the numeric operators Gt and Lt
            error: test.yaml: document 9 (Pod p): spec.topologySpreadConstraints[0].maxSkew: expected an integer of at least 1, got 0
            error: test.yaml: document 10 (Pod p): spec.topologySpreadConstraints[0].whenUnsatisfiable: expected DoNotSchedule or ScheduleAnyway, got "Never"
            error: test.yaml: document 11 (Pod p): spec.tolerations[0].effect: expected NoSchedule, PreferNoSchedule or NoExecute (or no effect, to match every effect), got "NoEvict"
            error: test.yaml: document 12 (Pod p): spec.tolerations[0].operator: expected Equal or Exists, got "Lt"
            error: test.yaml: document 13 (Pod p): spec.tolerations[0].operator: expected Exists when key is empty (an empty key with Exists tolerates every taint)
            error: test.yaml: document 14 (Pod p): spec.tolerations[0].value: expected no value when operator is Exists, got "x"
            error: test.yaml: document 15 (Pod p): spec.tolerations[0].tolerationSeconds: may only be set when effect is NoExecute
        "#]],
    );
}

#[test]
fn stateful_set() {
    check(
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, labels: {team: data}}
spec:
  serviceName: db
  replicas: 2
  podManagementPolicy: Parallel
  selector: {matchLabels: {app: db}}
  updateStrategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 2, partition: 1}}
  minReadySeconds: 5
  persistentVolumeClaimRetentionPolicy: {whenDeleted: Delete}
  ordinals: {start: 1}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
        - name: db
          image: peer-demo:latest
          env: [{name: PORT, value: "5432"}]
          ports: [{containerPort: 5432}]
          resources: {requests: {cpu: 50m, memory: 16Mi}}
  volumeClaimTemplates:
    - metadata: {name: data}
      spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
"#,
        expect![[r#"
            object: {
              "key": {
                "kind": "StatefulSet",
                "namespace": "default",
                "name": "db"
              },
              "labels": {
                "team": "data"
              },
              "replicas": 2,
              "selector": {
                "app": "db"
              },
              "strategy": {
                "RollingUpdate": {
                  "max_surge": {
                    "Int": 0
                  },
                  "max_unavailable": {
                    "Int": 2
                  }
                }
              },
              "template": {
                "labels": {
                  "app": "db"
                },
                "containers": [
                  {
                    "name": "db",
                    "image": "peer-demo:latest",
                    "command": [],
                    "args": [],
                    "env": [
                      {
                        "name": "PORT",
                        "value": "5432"
                      }
                    ],
                    "working_dir": null,
                    "ports": [
                      {
                        "name": null,
                        "container_port": 5432,
                        "protocol": "Tcp",
                        "host_port": null
                      }
                    ],
                    "resources": {
                      "requests": {
                        "cpu_millis": 50,
                        "memory_bytes": 16777216
                      },
                      "limits": {
                        "cpu_millis": null,
                        "memory_bytes": null
                      }
                    },
                    "probes": {
                      "liveness": null,
                      "readiness": null,
                      "startup": null
                    },
                    "pre_stop": null,
                    "image_pull_policy": null
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
                },
                "image_pull_secrets": []
              },
              "pod_management": "Parallel",
              "rollout": {
                "min_ready_seconds": 0,
                "progress_deadline_seconds": 600,
                "revision_history_limit": 10,
                "paused": false,
                "change_cause": null,
                "revision": 0,
                "history": []
              }
            }
            warning: test.yaml: document 1 (StatefulSet db): spec.updateStrategy.rollingUpdate.partition: not implemented by peer yet, ignored
            warning: test.yaml: document 1 (StatefulSet db): spec.minReadySeconds: not implemented by peer yet, ignored
            warning: test.yaml: document 1 (StatefulSet db): spec.persistentVolumeClaimRetentionPolicy: not implemented by peer yet, ignored
            warning: test.yaml: document 1 (StatefulSet db): spec.ordinals: not implemented by peer yet, ignored
            warning: test.yaml: document 1 (StatefulSet db): spec.volumeClaimTemplates: not implemented by peer yet, ignored: pods get no persistent volumes
            warning: test.yaml: document 1 (StatefulSet db): spec.updateStrategy: rolling updates are not implemented by peer yet: a changed template recreates every pod at once
        "#]],
    );
}

#[test]
fn stateful_set_defaults() {
    let result = parse_file(
        "test.yaml",
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db}\nspec:\n  template:\n    spec:\n      containers: [{name: db, image: peer-demo:latest}]\n",
    );
    assert_eq!(result.warnings().count(), 0);
    let w = result.workloads().next().expect("the StatefulSet parses");
    assert_eq!(w.replicas, 1);
    assert_eq!(w.pod_management, PodManagement::OrderedReady);
    assert_eq!(
        w.strategy,
        Strategy::RollingUpdate { max_surge: IntOrPercent::Int(0), max_unavailable: IntOrPercent::Int(1) }
    );
    let app: BTreeMap<String, String> = [("app".to_owned(), "db".to_owned())].into();
    assert_eq!(w.selector, app);
    assert_eq!(w.template.labels, app);
}

#[test]
fn daemon_set() {
    check(
        r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: kube-system}
spec:
  replicas: 3
  selector: {matchLabels: {app: agent}}
  updateStrategy: {type: OnDelete}
  template:
    metadata: {labels: {app: agent}}
    spec:
      tolerations: [{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}]
      containers:
        - name: agent
          image: peer-demo:latest
"#,
        expect![[r#"
            object: {
              "key": {
                "kind": "DaemonSet",
                "namespace": "kube-system",
                "name": "agent"
              },
              "labels": {},
              "replicas": 0,
              "selector": {
                "app": "agent"
              },
              "strategy": {
                "RollingUpdate": {
                  "max_surge": {
                    "Int": 0
                  },
                  "max_unavailable": {
                    "Int": 1
                  }
                }
              },
              "template": {
                "labels": {
                  "app": "agent"
                },
                "containers": [
                  {
                    "name": "agent",
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
                    },
                    "probes": {
                      "liveness": null,
                      "readiness": null,
                      "startup": null
                    },
                    "pre_stop": null,
                    "image_pull_policy": null
                  }
                ],
                "restart_policy": "Always",
                "termination_grace_period_seconds": 30,
                "host_network": false,
                "scheduling": {
                  "node_selector": {},
                  "tolerations": [
                    {
                      "key": "node-role.kubernetes.io/control-plane",
                      "operator": "Exists",
                      "value": "",
                      "effect": "NoSchedule",
                      "toleration_seconds": null
                    }
                  ],
                  "required_affinity": [],
                  "preferred_affinity": [],
                  "anti_affinity_by_hostname": false,
                  "topology_spread": null
                },
                "image_pull_secrets": []
              },
              "pod_management": "OrderedReady",
              "rollout": {
                "min_ready_seconds": 0,
                "progress_deadline_seconds": 600,
                "revision_history_limit": 10,
                "paused": false,
                "change_cause": null,
                "revision": 0,
                "history": []
              }
            }
            warning: test.yaml: document 1 (DaemonSet agent): spec.replicas: unknown field, ignored (not part of the Kubernetes API peer knows)
            warning: test.yaml: document 1 (DaemonSet agent): spec.updateStrategy.type: OnDelete is not implemented by peer yet, read as RollingUpdate: a changed template recreates every pod at once instead of waiting for them to be deleted
        "#]],
    );
}

#[test]
fn stateful_set_and_daemon_set_rules_are_enforced() {
    check_messages(
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: mismatch}
spec:
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: a, image: peer-demo:latest}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: never}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: a, image: peer-demo:latest}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: policy}
spec:
  podManagementPolicy: Random
  template:
    spec:
      containers: [{name: a, image: peer-demo:latest}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: stuck}
spec:
  updateStrategy: {rollingUpdate: {maxUnavailable: 0}}
  template:
    spec:
      containers: [{name: a, image: peer-demo:latest}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: mismatch}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: other}}
    spec:
      containers: [{name: a, image: peer-demo:latest}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: strategy}
spec:
  updateStrategy: {type: Recreate}
  template:
    spec:
      containers: [{name: a, image: peer-demo:latest}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: stuck}
spec:
  updateStrategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 0, maxUnavailable: 0}}
  template:
    spec:
      containers: [{name: a, image: peer-demo:latest}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: ondelete}
spec:
  updateStrategy: {type: OnDelete, rollingUpdate: {maxUnavailable: 1}}
  template:
    spec:
      containers: [{name: a, image: peer-demo:latest}]
---
apiVersion: apps/v1beta2
kind: DaemonSet
metadata: {name: old}
"#,
        expect![[r#"
            error: test.yaml: document 1 (StatefulSet mismatch): spec.template.metadata.labels: selector does not match template labels: the selector needs app: db
            error: test.yaml: document 2 (StatefulSet never): spec.template.spec.restartPolicy: expected Always for a StatefulSet, got "Never"
            error: test.yaml: document 3 (StatefulSet policy): spec.podManagementPolicy: expected OrderedReady or Parallel, got "Random"
            error: test.yaml: document 4 (StatefulSet stuck): spec.updateStrategy.rollingUpdate.maxUnavailable: may not be 0
            error: test.yaml: document 5 (DaemonSet mismatch): spec.template.metadata.labels: selector does not match template labels: the selector needs app: agent
            error: test.yaml: document 6 (DaemonSet strategy): spec.updateStrategy.type: expected RollingUpdate or OnDelete, got "Recreate"
            error: test.yaml: document 7 (DaemonSet stuck): spec.updateStrategy.rollingUpdate.maxUnavailable: may not be 0 when maxSurge is 0
            error: test.yaml: document 8 (DaemonSet ondelete): spec.updateStrategy.rollingUpdate: may not be specified when updateStrategy type is OnDelete
            error: test.yaml: document 9 (DaemonSet old): apiVersion: expected apps/v1 for kind DaemonSet, got "apps/v1beta2"
        "#]],
    );
}

/// Like [`check`], but of each workload only its containers' probes, then warnings and errors.
fn check_probes(yaml: &str, expect: Expect) {
    let result = parse_file("test.yaml", yaml);
    let mut out = String::new();
    for workload in result.workloads() {
        for c in &workload.template.containers {
            let json = serde_json::to_string(&c.probes).expect("probes are JSON");
            writeln!(out, "{}/{}: {json}", workload.key, c.name).expect("writing to a String");
        }
    }
    render_messages(&result, &mut out);
    expect.assert_eq(&out);
}

#[test]
fn probes_are_converted_with_kubernetes_defaults() {
    check_probes(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers:
    - name: web
      image: peer-demo:latest
      ports: [{name: http, containerPort: 8080}]
      livenessProbe:
        httpGet: {path: /healthz, port: http, httpHeaders: [{name: X-Probe, value: "1"}]}
        periodSeconds: 5
        failureThreshold: 2
      readinessProbe: {tcpSocket: {port: 8080}, successThreshold: 2, initialDelaySeconds: 3}
      startupProbe: {exec: {command: [cat, /tmp/started]}, failureThreshold: 30, terminationGracePeriodSeconds: 5}
    - name: side
      image: peer-demo:latest
      livenessProbe: {grpc: {port: 9000}}
      readinessProbe: {httpGet: {port: 8443, scheme: HTTPS, host: example.com}}
"#,
        expect![[r#"
            Pod/default/web/web: {"liveness":{"action":{"HttpGet":{"path":"/healthz","port":8080,"headers":[["X-Probe","1"]]}},"initial_delay_seconds":0,"period_seconds":5,"timeout_seconds":1,"success_threshold":1,"failure_threshold":2,"termination_grace_period_seconds":null},"readiness":{"action":{"TcpSocket":{"port":8080}},"initial_delay_seconds":3,"period_seconds":10,"timeout_seconds":1,"success_threshold":2,"failure_threshold":3,"termination_grace_period_seconds":null},"startup":{"action":{"Exec":{"command":["cat","/tmp/started"]}},"initial_delay_seconds":0,"period_seconds":10,"timeout_seconds":1,"success_threshold":1,"failure_threshold":30,"termination_grace_period_seconds":5}}
            Pod/default/web/side: {"liveness":null,"readiness":{"action":{"TcpSocket":{"port":8443}},"initial_delay_seconds":0,"period_seconds":10,"timeout_seconds":1,"success_threshold":1,"failure_threshold":3,"termination_grace_period_seconds":null},"startup":null}
            warning: test.yaml: document 1 (Pod web): spec.containers[1].livenessProbe.grpc: not implemented by peer yet, ignored: the container runs without this probe
            warning: test.yaml: document 1 (Pod web): spec.containers[1].readinessProbe.httpGet.host: not implemented by peer yet, ignored: the probe connects to the pod's own loopback
            warning: test.yaml: document 1 (Pod web): spec.containers[1].readinessProbe.httpGet.scheme: HTTPS is not implemented by peer yet: the probe only checks that the port accepts TCP connections
        "#]],
    );
}

#[test]
fn bad_probes_name_the_field() {
    check_messages(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: a}
spec:
  containers: [{name: a, image: x, livenessProbe: {tcpSocket: {port: 80}, exec: {command: ["true"]}}}]
---
apiVersion: v1
kind: Pod
metadata: {name: b}
spec:
  containers: [{name: a, image: x, livenessProbe: {httpGet: {port: metrics}}}]
---
apiVersion: v1
kind: Pod
metadata: {name: c}
spec:
  containers: [{name: a, image: x, startupProbe: {exec: {command: ["true"]}, successThreshold: 2}}]
---
apiVersion: v1
kind: Pod
metadata: {name: d}
spec:
  containers: [{name: a, image: x, readinessProbe: {tcpSocket: {port: 80}, periodSeconds: 0}}]
---
apiVersion: v1
kind: Pod
metadata: {name: e}
spec:
  containers: [{name: a, image: x, readinessProbe: {exec: {}}}]
"#,
        expect![[r#"
            error: test.yaml: document 1 (Pod a): spec.containers[0].livenessProbe: expected exactly one of exec, httpGet, tcpSocket or grpc
            error: test.yaml: document 2 (Pod b): spec.containers[0].livenessProbe.httpGet.port: expected a port number or the name of one of the container's ports (it names none), got "metrics"
            error: test.yaml: document 3 (Pod c): spec.containers[0].startupProbe.successThreshold: expected 1 for a startupProbe (as Kubernetes requires), got 2
            error: test.yaml: document 4 (Pod d): spec.containers[0].readinessProbe.periodSeconds: expected an integer of at least 1, got 0
            error: test.yaml: document 5 (Pod e): spec.containers[0].readinessProbe.exec.command: required field is missing, expected a command such as [cat, /tmp/healthy]
        "#]],
    );
}

#[test]
fn pre_stop_hooks_are_converted() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers:
    - name: a
      image: x
      ports: [{name: http, containerPort: 8080}]
      lifecycle: {preStop: {httpGet: {path: /drain, port: http}}}
    - name: b
      image: x
      lifecycle: {preStop: {sleep: {seconds: 5}}, postStart: {exec: {command: ["true"]}}}
---
apiVersion: v1
kind: Pod
metadata: {name: bad}
spec:
  containers: [{name: a, image: x, lifecycle: {preStop: {sleep: {seconds: 1}, exec: {command: ["true"]}}}}]
"#;
    let result = parse_file("test.yaml", yaml);
    let hooks: Vec<String> = result
        .workloads()
        .flat_map(|w| w.template.containers.iter().map(|c| format!("{:?}", c.pre_stop)).collect::<Vec<_>>())
        .collect();
    assert_eq!(
        hooks,
        [r#"Some(Action(HttpGet { path: "/drain", port: 8080, headers: [] }))"#, "Some(Sleep(5))"]
    );
    let mut out = String::new();
    render_messages(&result, &mut out);
    expect![[r#"
        warning: test.yaml: document 1 (Pod web): spec.containers[1].lifecycle.postStart: not implemented by peer yet, ignored
        error: test.yaml: document 2 (Pod bad): spec.containers[0].lifecycle.preStop: expected exactly one of exec, httpGet, tcpSocket or sleep
    "#]].assert_eq(&out);
}

#[test]
fn rollout_settings_are_read_and_checked() {
    let yaml = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  annotations: {kubernetes.io/change-cause: "image v2"}
spec:
  minReadySeconds: 5
  progressDeadlineSeconds: 60
  revisionHistoryLimit: 3
  paused: true
  template:
    spec:
      containers: [{name: a, image: peer-demo:latest}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: slow}
spec:
  minReadySeconds: 30
  progressDeadlineSeconds: 30
  template:
    spec:
      containers: [{name: a, image: peer-demo:latest}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: negative}
spec:
  revisionHistoryLimit: -1
  template:
    spec:
      containers: [{name: a, image: peer-demo:latest}]
"#;
    let result = parse_file("test.yaml", yaml);
    let mut out = String::new();
    for doc in &result.documents {
        match doc {
            DocResult::Object { object: Object::Workload(w), warnings } => {
                writeln!(out, "{}: {:?}", w.key.name, w.rollout).expect("writing to a String");
                for warning in warnings {
                    writeln!(out, "warning: {warning}").expect("writing to a String");
                }
            }
            other => {
                let mut one = FileResult { documents: vec![other.clone()], ..result.clone() };
                one.syntax_error = None;
                out.push_str(&render(&one));
            }
        }
    }
    expect![[r#"
        web: Rollout { min_ready_seconds: 5, progress_deadline_seconds: 60, revision_history_limit: 3, paused: true, change_cause: Some("image v2"), revision: 0, history: [] }
        invalid: Some("Deployment/default/slow")
        error: test.yaml: document 2 (Deployment slow): spec.progressDeadlineSeconds: must be greater than minReadySeconds (30), got 30
        invalid: Some("Deployment/default/negative")
        error: test.yaml: document 3 (Deployment negative): spec.revisionHistoryLimit: expected a number of at least 0, got -1
    "#]].assert_eq(&out);
}

/// Like [`check`], but of each workload only its containers' pull policies and its pull
/// secrets, then warnings and errors.
fn check_pulls(yaml: &str, expect: Expect) {
    let result = parse_file("test.yaml", yaml);
    let mut out = String::new();
    for workload in result.workloads() {
        for c in &workload.template.containers {
            let given = c.image_pull_policy.map_or("default".to_owned(), |p| format!("given {p:?}"));
            writeln!(out, "{}/{}: {} {:?} ({given})", workload.key, c.name, c.image, c.pull_policy())
                .expect("writing to a String");
        }
        writeln!(out, "{}: imagePullSecrets {:?}", workload.key, workload.template.image_pull_secrets)
            .expect("writing to a String");
    }
    render_messages(&result, &mut out);
    expect.assert_eq(&out);
}

#[test]
fn pull_policies_default_like_kubernetes() {
    check_pulls(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  imagePullSecrets: [{name: regcred}, {name: other}, {name: regcred}]
  containers:
    - {name: a, image: peer-demo:latest}
    - {name: b, image: peer-demo}
    - {name: c, image: "127.0.0.1:5000/demo:v1"}
    - {name: d, image: "127.0.0.1:5000/demo"}
    - {name: e, image: "registry.example/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}
    - {name: f, image: peer-demo:latest, imagePullPolicy: IfNotPresent}
    - {name: g, image: "127.0.0.1:5000/demo:v1", imagePullPolicy: Always}
    - {name: h, image: "127.0.0.1:5000/demo:v1", imagePullPolicy: Never}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  template:
    spec:
      containers: [{name: api, image: "127.0.0.1:5000/demo:v2"}]
"#,
        expect![[r#"
            Pod/default/web/a: peer-demo:latest Always (default)
            Pod/default/web/b: peer-demo Always (default)
            Pod/default/web/c: 127.0.0.1:5000/demo:v1 IfNotPresent (default)
            Pod/default/web/d: 127.0.0.1:5000/demo Always (default)
            Pod/default/web/e: registry.example/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef IfNotPresent (default)
            Pod/default/web/f: peer-demo:latest IfNotPresent (given IfNotPresent)
            Pod/default/web/g: 127.0.0.1:5000/demo:v1 Always (given Always)
            Pod/default/web/h: 127.0.0.1:5000/demo:v1 Never (given Never)
            Pod/default/web: imagePullSecrets ["regcred", "other"]
            Deployment/default/api/api: 127.0.0.1:5000/demo:v2 IfNotPresent (default)
            Deployment/default/api: imagePullSecrets []
        "#]],
    );
}

#[test]
fn bad_pull_fields_name_the_field() {
    check_messages(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: a}
spec:
  containers: [{name: a, image: x, imagePullPolicy: Sometimes}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: b}
spec:
  template:
    spec:
      imagePullSecrets: [{name: Reg_Cred}]
      containers: [{name: a, image: x}]
"#,
        expect![[r#"
            error: test.yaml: document 1 (Pod a): spec.containers[0].imagePullPolicy: expected Always, IfNotPresent or Never, got "Sometimes"
            error: test.yaml: document 2 (Deployment b): spec.template.spec.imagePullSecrets[0].name: expected the name of a Secret in the pod's namespace, got "Reg_Cred"
        "#]],
    );
}

#[test]
fn secrets_are_decoded_with_string_data_merged_over_data() {
    // `data`: user=alice, password=old; `.dockerconfigjson` = {"auths":{"r.example":{"auth":"YTpi"}}}.
    check(
        r#"
apiVersion: v1
kind: Secret
metadata: {name: app, namespace: shop, labels: {team: a}}
data:
  user: YWxpY2U=
  password: b2xk
stringData:
  password: new
immutable: true
---
apiVersion: v1
kind: Secret
metadata: {name: regcred}
type: kubernetes.io/dockerconfigjson
data:
  .dockerconfigjson: eyJhdXRocyI6eyJyLmV4YW1wbGUiOnsiYXV0aCI6IllUcGkifX19
---
apiVersion: v1
kind: Secret
metadata: {name: regcred2}
type: kubernetes.io/dockerconfigjson
stringData:
  .dockerconfigjson: '{"auths": {}}'
"#,
        expect![[r#"
            object: {
              "key": {
                "kind": "Secret",
                "namespace": "shop",
                "name": "app"
              },
              "labels": {
                "team": "a"
              },
              "secret_type": "Opaque",
              "data": {
                "password": "bmV3",
                "user": "YWxpY2U="
              }
            }
            warning: test.yaml: document 1 (Secret app): immutable: not implemented by peer yet, ignored: the Secret can be changed by applying it again
            object: {
              "key": {
                "kind": "Secret",
                "namespace": "default",
                "name": "regcred"
              },
              "labels": {},
              "secret_type": "kubernetes.io/dockerconfigjson",
              "data": {
                ".dockerconfigjson": "eyJhdXRocyI6eyJyLmV4YW1wbGUiOnsiYXV0aCI6IllUcGkifX19"
              }
            }
            object: {
              "key": {
                "kind": "Secret",
                "namespace": "default",
                "name": "regcred2"
              },
              "labels": {},
              "secret_type": "kubernetes.io/dockerconfigjson",
              "data": {
                ".dockerconfigjson": "eyJhdXRocyI6IHt9fQ=="
              }
            }
        "#]],
    );
}

#[test]
fn bad_secrets_name_the_field_and_never_show_a_value() {
    let big = "A".repeat(360 * 1024);
    let yaml = format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: a}}
data: {{password: "c2VjcmV0!!"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: b}}
type: kubernetes.io/dockerconfigjson
data: {{other: YQ==}}
---
apiVersion: v1
kind: Secret
metadata: {{name: c}}
type: kubernetes.io/dockerconfigjson
stringData: {{.dockerconfigjson: '{{"registry": "hunter2"}}'}}
---
apiVersion: v1
kind: Secret
metadata: {{name: d}}
data: {{big: "{big}"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: e}}
stringData: {{"a/b": x}}
---
apiVersion: v1
kind: Secret
metadata: {{name: f}}
data: {{n: 5}}
"#
    );
    let result = parse_file("test.yaml", &yaml);
    let mut out = String::new();
    render_messages(&result, &mut out);
    assert!(!out.contains("c2VjcmV0") && !out.contains("hunter2"), "{out}");
    expect![[r#"
        error: test.yaml: document 1 (Secret a): data.password: expected a base64-encoded value (standard alphabet, with padding); the value is not shown
        error: test.yaml: document 2 (Secret b): data[".dockerconfigjson"]: required for type kubernetes.io/dockerconfigjson, expected a Docker config.json document with an auths object
        error: test.yaml: document 3 (Secret c): stringData[".dockerconfigjson"]: expected a JSON document with an auths object (Docker's config.json shape); the value is not shown
        error: test.yaml: document 4 (Secret d): data: the secret holds 276483 bytes of keys and values, more than peer's limit of 262144 (every node keeps every secret)
        error: test.yaml: document 5 (Secret e): stringData["a/b"]: expected a key of letters, digits, '-', '_' and '.', at most 253 characters, got "a/b"
        error: test.yaml: document 6 (Secret f): data.n: expected a base64-encoded string
    "#]]
    .assert_eq(&out);
    // The previous version of an invalid Secret is kept: its key is known.
    assert!(result.documents.iter().all(|d| matches!(d, DocResult::Invalid { key: Some(_), .. })));
}
