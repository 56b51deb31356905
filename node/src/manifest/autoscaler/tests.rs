//! Snapshot tests of HorizontalPodAutoscaler manifests; refresh with
//! `UPDATE_EXPECT=1 cargo test -p node manifest`.

use std::fmt::Write;

use expect_test::{expect, Expect};

use crate::manifest::parse_file;
use crate::manifest::tests::{check, check_messages};

/// One line per autoscaler (key, target, bounds, metrics, then each direction's rules),
/// then messages.
fn check_autoscalers(yaml: &str, expect: Expect) {
    let result = parse_file("test.yaml", yaml);
    let mut out = String::new();
    for a in result.objects().filter_map(|o| o.as_autoscaler()) {
        let metrics: Vec<String> =
            a.metrics.iter().map(|m| format!("{}={:?}", m.resource, m.target)).collect();
        writeln!(
            out,
            "{} -> {} {}..={} [{}]",
            a.key,
            a.target_key(),
            a.min_replicas,
            a.max_replicas,
            metrics.join(" ")
        )
        .expect("writing to a String");
        for (direction, r) in [("up", &a.behavior.scale_up), ("down", &a.behavior.scale_down)] {
            let policies: Vec<String> = r
                .policies
                .iter()
                .map(|p| format!("{:?} {}/{}s", p.kind, p.value, p.period_seconds))
                .collect();
            writeln!(
                out,
                "  {direction}: window {}s, {:?} of [{}], tolerance {}‰",
                r.stabilization_window_seconds,
                r.select_policy,
                policies.join(", "),
                r.tolerance_milli
            )
            .expect("writing to a String");
        }
    }
    for warning in result.warnings() {
        writeln!(out, "warning: {warning}").expect("writing to a String");
    }
    for error in result.errors() {
        writeln!(out, "error: {error}").expect("writing to a String");
    }
    expect.assert_eq(&out);
}

#[test]
fn the_walkthrough_example() {
    // kubernetes.io "HorizontalPodAutoscaler Walkthrough": php-apache at 50 % cpu.
    check(
        r#"
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: php-apache
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: php-apache
  minReplicas: 1
  maxReplicas: 10
  metrics:
  - type: Resource
    resource:
      name: cpu
      target:
        type: Utilization
        averageUtilization: 50
"#,
        expect![[r#"
            object: {
              "key": {
                "kind": "HorizontalPodAutoscaler",
                "namespace": "default",
                "name": "php-apache"
              },
              "labels": {},
              "scale_target": {
                "kind": "Deployment",
                "name": "php-apache"
              },
              "min_replicas": 1,
              "max_replicas": 10,
              "metrics": [
                {
                  "resource": "Cpu",
                  "target": {
                    "Utilization": 50
                  }
                }
              ],
              "behavior": {
                "scale_up": {
                  "stabilization_window_seconds": 0,
                  "select_policy": "Max",
                  "policies": [
                    {
                      "kind": "Pods",
                      "value": 4,
                      "period_seconds": 15
                    },
                    {
                      "kind": "Percent",
                      "value": 100,
                      "period_seconds": 15
                    }
                  ],
                  "tolerance_milli": 100
                },
                "scale_down": {
                  "stabilization_window_seconds": 300,
                  "select_policy": "Max",
                  "policies": [
                    {
                      "kind": "Percent",
                      "value": 100,
                      "period_seconds": 15
                    }
                  ],
                  "tolerance_milli": 100
                }
              }
            }
        "#]],
    );
}

#[test]
fn behavior_metrics_and_defaults() {
    check_autoscalers(
        r#"
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web, namespace: shop}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: StatefulSet, name: web}
  minReplicas: 2
  maxReplicas: 20
  metrics:
  - type: Resource
    resource:
      name: memory
      target: {type: AverageValue, averageValue: 100Mi}
  - type: Resource
    resource:
      name: cpu
      target: {type: AverageValue, averageValue: 500m}
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 60
      selectPolicy: Min
      tolerance: "0.05"
      policies:
      - {type: Pods, value: 4, periodSeconds: 60}
      - {type: Percent, value: 10, periodSeconds: 60}
    scaleUp:
      selectPolicy: Disabled
---
# No minReplicas and no metrics: 1 and cpu at 80 %, Kubernetes' defaults.
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: bare}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: bare}
  maxReplicas: 3
---
apiVersion: autoscaling/v1
kind: HorizontalPodAutoscaler
metadata: {name: old}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: old}
  minReplicas: 2
  maxReplicas: 4
  targetCPUUtilizationPercentage: 60
---
apiVersion: autoscaling/v1
kind: HorizontalPodAutoscaler
metadata: {name: old-default}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: old}
  maxReplicas: 4
"#,
        expect![[r#"
            HorizontalPodAutoscaler/shop/web -> StatefulSet/shop/web 2..=20 [memory=AverageValue(104857600) cpu=AverageValue(500)]
              up: window 0s, Disabled of [Pods 4/15s, Percent 100/15s], tolerance 100‰
              down: window 60s, Min of [Pods 4/60s, Percent 10/60s], tolerance 50‰
            HorizontalPodAutoscaler/default/bare -> Deployment/default/bare 1..=3 [cpu=Utilization(80)]
              up: window 0s, Max of [Pods 4/15s, Percent 100/15s], tolerance 100‰
              down: window 300s, Max of [Percent 100/15s], tolerance 100‰
            HorizontalPodAutoscaler/default/old -> Deployment/default/old 2..=4 [cpu=Utilization(60)]
              up: window 0s, Max of [Pods 4/15s, Percent 100/15s], tolerance 100‰
              down: window 300s, Max of [Percent 100/15s], tolerance 100‰
            HorizontalPodAutoscaler/default/old-default -> Deployment/default/old 1..=4 [cpu=Utilization(80)]
              up: window 0s, Max of [Pods 4/15s, Percent 100/15s], tolerance 100‰
              down: window 300s, Max of [Percent 100/15s], tolerance 100‰
        "#]],
    );
}

#[test]
fn metric_types_peer_does_not_implement_are_skipped_with_a_warning() {
    check_autoscalers(
        r#"
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  maxReplicas: 10
  metrics:
  - type: Pods
    pods:
      metric: {name: packets-per-second}
      target: {type: AverageValue, averageValue: 1k}
  - type: Resource
    resource:
      name: cpu
      target: {type: Utilization, averageUtilization: 50, value: 3}
  - type: External
    external:
      metric: {name: queue_messages_ready}
      target: {type: AverageValue, averageValue: "30"}
  - type: Resource
    resource:
      name: ephemeral-storage
      target: {type: AverageValue, averageValue: 1Gi}
  - type: ContainerResource
    containerResource:
      name: cpu
      container: app
      target: {type: Utilization, averageUtilization: 60}
  - type: Resource
    resource:
      name: memory
      target: {type: Utilization, averageValue: 200Mi}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: only-custom}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  maxReplicas: 10
  metrics:
  - type: Object
    object:
      metric: {name: requests-per-second}
      describedObject: {apiVersion: networking.k8s.io/v1, kind: Ingress, name: main-route}
      target: {type: Value, value: 10k}
"#,
        expect![[r#"
            HorizontalPodAutoscaler/default/web -> Deployment/default/web 1..=10 [cpu=Utilization(50) memory=AverageValue(209715200)]
              up: window 0s, Max of [Pods 4/15s, Percent 100/15s], tolerance 100‰
              down: window 300s, Max of [Percent 100/15s], tolerance 100‰
            warning: test.yaml: document 1 (HorizontalPodAutoscaler web): spec.metrics[1].resource.target.value: a Resource metric's target is averageUtilization or averageValue; value is ignored, as Kubernetes does
            warning: test.yaml: document 1 (HorizontalPodAutoscaler web): spec.metrics[0]: metrics of type Pods are not implemented by peer yet, ignored: peer scales on Resource metrics (cpu and memory)
            warning: test.yaml: document 1 (HorizontalPodAutoscaler web): spec.metrics[2]: metrics of type External are not implemented by peer yet, ignored: peer scales on Resource metrics (cpu and memory)
            warning: test.yaml: document 1 (HorizontalPodAutoscaler web): spec.metrics[3].resource.name: peer measures only cpu and memory, the metric on "ephemeral-storage" is ignored
            warning: test.yaml: document 1 (HorizontalPodAutoscaler web): spec.metrics[4]: metrics of type ContainerResource are not implemented by peer yet, ignored: peer scales on Resource metrics (cpu and memory)
            warning: test.yaml: document 1 (HorizontalPodAutoscaler web): spec.metrics[5].resource.target.type: is Utilization, but the target set is AverageValue; the AverageValue target is used, as Kubernetes does
            error: test.yaml: document 2 (HorizontalPodAutoscaler only-custom): spec.metrics: no metric peer implements: expected at least one metric of type Resource on cpu or memory
        "#]],
    );
}

#[test]
fn kubernetes_rules_are_enforced() {
    let doc = |spec: &str| {
        format!(
            "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {{name: x}}\nspec:\n  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: web}}\n{spec}\n"
        )
    };
    let resource = |target: &str| {
        doc(&format!(
            "  maxReplicas: 5\n  metrics:\n  - type: Resource\n    resource:\n      name: cpu\n      target: {target}"
        ))
    };
    let behavior = |rules: &str| doc(&format!("  maxReplicas: 5\n  behavior:\n    scaleDown: {rules}"));
    let docs = [
        doc("  minReplicas: 0\n  maxReplicas: 5"),
        doc("  minReplicas: 3\n  maxReplicas: 2"),
        doc("  maxReplicas: 0"),
        doc("  maxReplica: 5"),
        resource("{type: Utilization, averageUtilization: 50, averageValue: 100m}"),
        resource("{type: Utilization}"),
        resource("{type: Utilization, averageUtilization: 0}"),
        resource("{type: AverageValue, averageValue: \"0\"}"),
        resource("{type: AverageValue, averageValue: 1XB}"),
        resource("{type: Fast, averageUtilization: 50}"),
        doc("  maxReplicas: 5\n  metrics:\n  - type: Custom"),
        doc("  maxReplicas: 5\n  metrics:\n  - type: Pods"),
        doc("  maxReplicas: 5\n  metrics:\n  - type: Resource\n    resource: {name: cpu, target: {type: Utilization, averageUtilization: 5}}\n    pods: {metric: {name: a}, target: {type: AverageValue, averageValue: 1}}"),
        behavior("{stabilizationWindowSeconds: 3601}"),
        behavior("{selectPolicy: Fastest}"),
        behavior("{policies: []}"),
        behavior("{policies: [{type: Pods, value: 0, periodSeconds: 15}]}"),
        behavior("{policies: [{type: Pods, value: 1, periodSeconds: 1801}]}"),
        behavior("{policies: [{type: Replicas, value: 1, periodSeconds: 15}]}"),
        behavior("{tolerance: \"-0.1\"}"),
    ];
    check_messages(
        &docs.join("---\n"),
        expect![[r#"
            error: test.yaml: document 1 (HorizontalPodAutoscaler x): spec.minReplicas: expected an integer of at least 1, got 0
            error: test.yaml: document 2 (HorizontalPodAutoscaler x): spec.maxReplicas: must be greater than or equal to minReplicas (3), got 2
            error: test.yaml: document 3 (HorizontalPodAutoscaler x): spec.maxReplicas: required field is missing or 0, expected an integer of at least 1
            error: test.yaml: document 4 (HorizontalPodAutoscaler x): spec.maxReplicas: required field is missing or 0, expected an integer of at least 1
            error: test.yaml: document 5 (HorizontalPodAutoscaler x): spec.metrics[0].resource.target.averageValue: may not set both a target raw value and a target utilization
            error: test.yaml: document 6 (HorizontalPodAutoscaler x): spec.metrics[0].resource.target.averageUtilization: required field is missing, expected averageUtilization (a percentage of the pods' requests) or averageValue
            error: test.yaml: document 7 (HorizontalPodAutoscaler x): spec.metrics[0].resource.target.averageUtilization: expected a percentage of at least 1, got 0
            error: test.yaml: document 8 (HorizontalPodAutoscaler x): spec.metrics[0].resource.target.averageValue: must be positive, got "0"
            error: test.yaml: document 9 (HorizontalPodAutoscaler x): spec.metrics[0].resource.target.averageValue: expected a quantity such as 500m, 0.5, 128Mi or 1Gi, got "1XB" (unknown suffix)
            error: test.yaml: document 10 (HorizontalPodAutoscaler x): spec.metrics[0].resource.target.type: expected Utilization or AverageValue, got "Fast"
            error: test.yaml: document 11 (HorizontalPodAutoscaler x): spec.metrics[0].type: expected Resource, Pods, Object, External or ContainerResource, got "Custom"
            error: test.yaml: document 12 (HorizontalPodAutoscaler x): spec.metrics[0].pods: required field is missing, expected the metric source of type Pods
            error: test.yaml: document 13 (HorizontalPodAutoscaler x): spec.metrics[0].pods: must populate only the metric source of type Resource
            error: test.yaml: document 14 (HorizontalPodAutoscaler x): spec.behavior.scaleDown.stabilizationWindowSeconds: expected a number of seconds from 0 to 3600, got 3601
            error: test.yaml: document 15 (HorizontalPodAutoscaler x): spec.behavior.scaleDown.selectPolicy: expected Max, Min or Disabled, got "Fastest"
            error: test.yaml: document 16 (HorizontalPodAutoscaler x): spec.behavior.scaleDown.policies: must specify at least one policy
            error: test.yaml: document 17 (HorizontalPodAutoscaler x): spec.behavior.scaleDown.policies[0].value: expected an integer of at least 1, got 0
            error: test.yaml: document 18 (HorizontalPodAutoscaler x): spec.behavior.scaleDown.policies[0].periodSeconds: expected a number of seconds from 1 to 1800, got 1801
            error: test.yaml: document 19 (HorizontalPodAutoscaler x): spec.behavior.scaleDown.policies[0].type: expected Pods or Percent, got "Replicas"
            error: test.yaml: document 20 (HorizontalPodAutoscaler x): spec.behavior.scaleDown.tolerance: expected a quantity such as 500m, 0.5, 128Mi or 1Gi, got "-0.1" (must not be negative)
        "#]],
    );
}

#[test]
fn the_scale_target_is_an_apps_v1_deployment_or_stateful_set() {
    let doc = |target: &str| {
        format!("apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {{name: x}}\nspec:\n  maxReplicas: 5\n  scaleTargetRef: {target}\n")
    };
    let docs = [
        doc("{apiVersion: apps/v1, kind: ReplicaSet, name: web}"),
        doc("{kind: Deployment, name: web}"),
        doc("{apiVersion: extensions/v1beta1, kind: Deployment, name: web}"),
        doc("{apiVersion: apps/v1, kind: Deployment, name: Web_1}"),
        doc("{apiVersion: apps/v1, name: web}"),
    ];
    let mut text = docs.join("---\n");
    text.push_str("---\napiVersion: autoscaling/v2beta2\nkind: HorizontalPodAutoscaler\nmetadata: {name: beta}\nspec: {maxReplicas: 2}\n");
    check_messages(
        &text,
        expect![[r#"
        error: test.yaml: document 1 (HorizontalPodAutoscaler x): spec.scaleTargetRef.kind: expected Deployment or StatefulSet (the kinds peer scales), got "ReplicaSet"
        error: test.yaml: document 2 (HorizontalPodAutoscaler x): spec.scaleTargetRef.apiVersion: required field is missing, expected apps/v1
        error: test.yaml: document 3 (HorizontalPodAutoscaler x): spec.scaleTargetRef.apiVersion: expected apps/v1, got "extensions/v1beta1"
        error: test.yaml: document 4 (HorizontalPodAutoscaler x): spec.scaleTargetRef.name: expected the name of a Deployment: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters, got "Web_1"
        error: test.yaml: document 5 (HorizontalPodAutoscaler x): spec.scaleTargetRef.kind: required field is missing, expected Deployment or StatefulSet
        error: test.yaml: document 6 (HorizontalPodAutoscaler beta): apiVersion: expected autoscaling/v2 for kind HorizontalPodAutoscaler, got "autoscaling/v2beta2"
    "#]],
    );
}
