package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const healNS = "node-heal"

// TestStoreHealsWhenTheUserFixesIt is what a new user runs into: an
// ETagStore whose Redis image cannot be pulled (no registry is reachable
// from the node, so any image that is not imported fails) must say why, in
// the pod's own terms, within a bounded time; and after `kubectl patch` to a
// good image it must become Ready on its own, although the StatefulSet
// controller alone would wait forever for the broken pod of the old
// revision (kubernetes#67250). Then the same for a crash loop. The operator
// runs from the chart, so its RBAC (pods delete) is the chart's.
func TestStoreHealsWhenTheUserFixesIt(t *testing.T) {
	e := loadEnv(t)
	if e.helm == "" {
		t.Fatal("SAMETAG_HELM is not set")
	}
	helmHome := t.TempDir()
	helm := func(args ...string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
		defer cancel()
		cmd := execCommand(ctx, e.helm, args...)
		cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+helmHome+"/cache",
			"HELM_CONFIG_HOME="+helmHome+"/config", "HELM_DATA_HOME="+helmHome+"/data")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("helm %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	t.Cleanup(func() {
		_, _ = e.kTry(t, "delete", "namespace", healNS, "--wait=true", "--timeout=120s")
		_ = helm("uninstall", release, "-n", operatorNS, "--wait", "--timeout=2m")
		_, _ = e.kTry(t, "delete", "namespace", operatorNS, "--wait=true", "--timeout=120s")
	})
	if err := helm("install", release, filepath.Join(e.repo, "charts", "sametag"), "-n", operatorNS, "--create-namespace",
		"--set", "image.repository=sametag.local/sametag-operator", "--set", "image.tag=dev",
		"--set", "image.pullPolicy=Never", "--set", "sidecarImage=sametag.local/sametag-sidecar:dev",
		"--set", "replicaCount=1", "--set", "logFormat=text", "--wait", "--timeout=4m"); err != nil {
		t.Fatal(err)
	}
	ns := e.namespace(t, healNS)
	const bad, good = "sametag.local/redis:nope", "sametag.local/redis:dev"

	// condition reads one condition as "status reason message".
	condition := func(typ string) (string, error) {
		return e.kTry(t, "-n", ns, "get", "ets", "demo", "-o",
			fmt.Sprintf(`jsonpath={.status.conditions[?(@.type=="%s")].status} {.status.conditions[?(@.type=="%s")].reason} {.status.conditions[?(@.type=="%s")].message}`, typ, typ, typ))
	}

	// setImage is the fix as a user makes it; nothing else is touched by hand.
	setImage := func(image string) {
		e.k(t, "-n", ns, "patch", "ets", "demo", "--type=merge",
			"-p", fmt.Sprintf(`{"spec":{"redis":{"managed":{"image":%q}}}}`, image))
	}
	readyWithin := func(d time.Duration, what string) {
		eventually(t, d, what, func() error {
			got, err := condition("Ready")
			if err != nil {
				return err
			}
			if !strings.HasPrefix(got, "True ") {
				pods, _ := e.kTry(t, "-n", ns, "get", "pods", "-o", "wide")
				return fmt.Errorf("Ready = %q; pods:\n%s", got, pods)
			}
			return nil
		})
	}

	created := time.Now()
	e.apply(t, fmt.Sprintf(`apiVersion: sametag.dev/v1alpha1
kind: ETagStore
metadata: {name: demo, namespace: %s}
spec:
  redis:
    managed: {image: %s}
`, ns, bad))
	want := fmt.Sprintf(`True ImagePullBackOff pod demo-redis-0: image %q cannot be pulled (ImagePullBackOff)`, bad)
	eventually(t, 2*time.Minute, "Degraded with the pod's reason", func() error {
		got, err := condition("Degraded")
		if err != nil {
			return err
		}
		if strings.TrimSpace(got) != want {
			return fmt.Errorf("Degraded = %q, want %q", got, want)
		}
		return nil
	})
	t.Logf("bad image: Degraded=True ImagePullBackOff %s after the ETagStore was created", time.Since(created).Round(time.Second))
	ready, _ := condition("Ready")
	if !strings.HasPrefix(ready, "False ImagePullBackOff ") {
		t.Fatalf("Ready = %q, want False with the pod's reason", ready)
	}
	table := e.k(t, "-n", ns, "get", "ets", "demo")
	t.Logf("kubectl get ets:\n%s", table)
	oldUID := strings.TrimSpace(e.k(t, "-n", ns, "get", "pod", "demo-redis-0", "-o", "jsonpath={.metadata.uid}"))

	fixed := time.Now()
	setImage(good)
	readyWithin(time.Minute, "Ready after the image was fixed")
	healed := time.Since(fixed).Round(100 * time.Millisecond)
	t.Logf("fixed image: Ready=True %s after kubectl patch, no manual step", healed)

	// The operator replaced the stuck pod (and said so); the StatefulSet's
	// rollout is complete and its pod runs the fixed image.
	pod := e.k(t, "-n", ns, "get", "pod", "demo-redis-0", "-o",
		`jsonpath={.metadata.uid} {.spec.containers[?(@.name=="redis")].image}`)
	if f := strings.Fields(pod); len(f) != 2 || f[0] == oldUID || f[1] != good {
		t.Fatalf("demo-redis-0 is %q; want a new pod (not uid %s) running %s", pod, oldUID, good)
	}
	eventually(t, 30*time.Second, "StatefulSet rollout complete", func() error {
		rev, err := e.kTry(t, "-n", ns, "get", "sts", "demo-redis", "-o",
			"jsonpath={.status.currentRevision} {.status.updateRevision}")
		if f := strings.Fields(rev); err != nil || len(f) != 2 || f[0] != f[1] {
			return fmt.Errorf("revisions %q (%v)", rev, err)
		}
		return nil
	})
	events := e.k(t, "-n", ns, "get", "events", "--field-selector", "reason=ReplacedStuckPod",
		"-o", "jsonpath={range .items[*]}{.note}{.message}{\"\\n\"}{end}")
	if !strings.Contains(events, "deleted pod demo-redis-0 (ImagePullBackOff") {
		t.Fatalf("no ReplacedStuckPod Event for demo-redis-0: %q", events)
	}
	logs := e.k(t, "-n", operatorNS, "logs", "-l", "app.kubernetes.io/instance="+release, "--tail=-1")
	if n := strings.Count(logs, "replaced a stuck Redis pod of an outdated revision"); n != 1 {
		t.Fatalf("want one log line for the replaced pod, got %d", n)
	}
	degraded, _ := condition("Degraded")
	if !strings.HasPrefix(degraded, "False ") {
		t.Fatalf("Degraded = %q after the fix", degraded)
	}

	// The other way a template breaks: an image that is there but whose
	// container cannot run (the demo app's image has no shell for the start
	// script), so the new revision's pod crash-loops. The condition names
	// the crash loop and its last exit; the fix heals it the same way.
	const crashing = "sametag.local/demoapp:dev"
	setImage(crashing)
	eventually(t, 2*time.Minute, "Degraded with the crash loop", func() error {
		got, err := condition("Degraded")
		if err != nil {
			return err
		}
		if !strings.HasPrefix(got, "True CrashLoopBackOff pod demo-redis-0: container redis keeps crashing (CrashLoopBackOff; last exit: ") {
			return fmt.Errorf("Degraded = %q", got)
		}
		return nil
	})
	crashed, _ := condition("Degraded")
	t.Logf("crashing image: Degraded=%s", crashed)
	crashUID := strings.TrimSpace(e.k(t, "-n", ns, "get", "pod", "demo-redis-0", "-o", "jsonpath={.metadata.uid}"))
	fixed = time.Now()
	setImage(good)
	readyWithin(time.Minute, "Ready after the crash loop was fixed")
	t.Logf("fixed image after a crash loop: Ready=True %s after kubectl patch, no manual step",
		time.Since(fixed).Round(100*time.Millisecond))
	pod = e.k(t, "-n", ns, "get", "pod", "demo-redis-0", "-o",
		`jsonpath={.metadata.uid} {.spec.containers[?(@.name=="redis")].image}`)
	if f := strings.Fields(pod); len(f) != 2 || f[0] == crashUID || f[1] != good {
		t.Fatalf("demo-redis-0 is %q; want a new pod (not uid %s) running %s", pod, crashUID, good)
	}
	events = e.k(t, "-n", ns, "get", "events", "--field-selector", "reason=ReplacedStuckPod",
		"-o", "jsonpath={range .items[*]}{.note}{.message}{\"\\n\"}{end}")
	if !strings.Contains(events, "deleted pod demo-redis-0 (CrashLoopBackOff") {
		t.Fatalf("no ReplacedStuckPod Event for the crash-looping pod: %q", events)
	}
	t.Logf("events:\n%s", e.k(t, "-n", ns, "get", "events", "--sort-by=.lastTimestamp"))
}
