// Command controlplane runs a real Kubernetes control plane in one process for
// the end-to-end tests: embedded etcd, kube-apiserver and
// kube-controller-manager, all on free loopback ports.
//
// It writes an admin kubeconfig (a token user in system:masters), then prints
// a ready line and writes a ready file, and stops cleanly on SIGTERM/SIGINT.
// Nothing here is a fake: the apiserver and controllers are the upstream
// commands, configured with the same flags a cluster would use.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// defaultControllers is what the tests need: Deployments become ReplicaSets
// and Pods, each namespace gets its default ServiceAccount (the ServiceAccount
// admission plugin rejects Pods without it), namespaces can be deleted, and
// owner references are garbage-collected.
const defaultControllers = "deployment,replicaset,serviceaccount,serviceaccount-token,namespace,garbagecollector"

// options are the command-line flags of the harness.
type options struct {
	kubeconfig  string
	dataDir     string
	readyFile   string
	controllers string
	verbosity   int
	extraAPI    string
	extraCM     string
	stdinEOF    bool
}

// readyInfo is written (as JSON) to --ready-file once the control plane serves.
type readyInfo struct {
	Server     string `json:"server"`
	Kubeconfig string `json:"kubeconfig"`
	CAFile     string `json:"caFile"`
	Token      string `json:"token"`
	Etcd       string `json:"etcd"`
	DataDir    string `json:"dataDir"`
	PID        int    `json:"pid"`
}

func main() {
	var o options
	flag.StringVar(&o.kubeconfig, "kubeconfig", "", "where to write the admin kubeconfig (required)")
	flag.StringVar(&o.dataDir, "data-dir", "", "state directory (etcd data, certificates); default: a temporary directory removed on exit")
	flag.StringVar(&o.readyFile, "ready-file", "", "write a JSON ready marker here once the control plane serves")
	flag.StringVar(&o.controllers, "controllers", defaultControllers, "kube-controller-manager --controllers")
	flag.IntVar(&o.verbosity, "v", 0, "klog verbosity of the apiserver and controller-manager")
	flag.StringVar(&o.extraAPI, "apiserver-args", "", "extra kube-apiserver flags, space separated")
	flag.StringVar(&o.extraCM, "controller-manager-args", "", "extra kube-controller-manager flags, space separated")
	flag.BoolVar(&o.stdinEOF, "exit-on-stdin-eof", false, "shut down (as on SIGTERM) when stdin reaches EOF, i.e. when the parent that holds the pipe dies")
	flag.Parse()
	if o.kubeconfig == "" {
		fmt.Fprintln(os.Stderr, "controlplane: --kubeconfig is required")
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintf(os.Stderr, "controlplane: %v\n", err)
		os.Exit(1)
	}
}

func run(o options) error {
	// The apiserver command installs its own SIGTERM/SIGINT handler (it can be
	// set up only once per process) and shuts down gracefully on it; this
	// channel lets us follow the same signal to stop the rest.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	if o.stdinEOF {
		// A test process that dies without stopping us closes our stdin:
		// turn that into the same graceful SIGTERM path.
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			step("stdin closed, shutting down")
			_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
		}()
	}

	removeDir := false
	if o.dataDir == "" {
		d, err := os.MkdirTemp("", "sametag-controlplane-")
		if err != nil {
			return err
		}
		o.dataDir = d
		removeDir = true
	}
	if removeDir {
		defer os.RemoveAll(o.dataDir)
	}
	kubeconfig, err := filepath.Abs(o.kubeconfig)
	if err != nil {
		return err
	}

	pki, err := writePKI(filepath.Join(o.dataDir, "pki"))
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}

	step("starting etcd")
	etcd, etcdURL, err := startEtcd(filepath.Join(o.dataDir, "etcd"))
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer etcd.Close()

	apiPort, err := freePort()
	if err != nil {
		return err
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	if err := writeKubeconfig(kubeconfig, server, pki.caPEM, pki.adminToken); err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}

	// Before the apiserver command exists (see prepareControllerManager).
	cm, err := prepareControllerManager(controllerManagerArgs(o, pki, kubeconfig))
	if err != nil {
		return fmt.Errorf("kube-controller-manager flags: %w", err)
	}

	step("starting kube-apiserver on " + server)
	apiDone := make(chan error, 1)
	go func() {
		apiDone <- runAPIServer(apiServerArgs(o, pki, etcdURL, apiPort))
	}()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := waitReady(ctx, server, pki, apiDone, sigs); err != nil {
		if errors.Is(err, errStopped) {
			// Stopped before ready: the apiserver saw the signal too.
			step("signal received before ready, stopping")
			return nil
		}
		return fmt.Errorf("kube-apiserver: %w", err)
	}

	step("starting kube-controller-manager (" + o.controllers + ")")
	cmDone := make(chan error, 1)
	go func() {
		cmDone <- cm.run(ctx)
	}()

	info := readyInfo{
		Server: server, Kubeconfig: kubeconfig, CAFile: pki.caFile, Token: pki.adminToken,
		Etcd: etcdURL, DataDir: o.dataDir, PID: os.Getpid(),
	}
	if o.readyFile != "" {
		b, _ := json.MarshalIndent(info, "", "  ")
		tmp := o.readyFile + ".tmp"
		if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
			return err
		}
		// Rename so a reader never sees a half-written marker.
		if err := os.Rename(tmp, o.readyFile); err != nil {
			return err
		}
	}
	fmt.Printf("READY server=%s kubeconfig=%s\n", server, kubeconfig)

	select {
	case <-sigs:
		step("signal received, shutting down")
	case err := <-apiDone:
		cancel()
		return fmt.Errorf("kube-apiserver exited: %v", err)
	case err := <-cmDone:
		return fmt.Errorf("kube-controller-manager exited: %v", err)
	}
	cancel()
	// The apiserver saw the same signal; give it a bounded time to drain.
	select {
	case <-apiDone:
	case <-time.After(20 * time.Second):
		step("kube-apiserver did not stop in 20s; exiting anyway")
	}
	select {
	case <-cmDone:
	case <-time.After(5 * time.Second):
	}
	if o.readyFile != "" {
		_ = os.Remove(o.readyFile)
	}
	step("stopped")
	return nil
}

func apiServerArgs(o options, p *pkiFiles, etcdURL string, port int) []string {
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port),
		"--cert-dir=" + filepath.Dir(p.caFile),
		"--tls-cert-file=" + p.servingCert,
		"--tls-private-key-file=" + p.servingKey,
		"--client-ca-file=" + p.caFile,
		"--service-cluster-ip-range=10.0.0.0/24",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.saPub,
		"--service-account-signing-key-file=" + p.saKey,
		"--token-auth-file=" + p.tokenFile,
		"--authorization-mode=RBAC",
		"--allow-privileged=true",
		// Nothing routes to a loopback "kubernetes" Service endpoint, and the
		// Endpoints validation rejects loopback addresses: do not reconcile it.
		"--endpoint-reconciler-type=none",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		fmt.Sprintf("--v=%d", o.verbosity),
	}
	return append(args, strings.Fields(o.extraAPI)...)
}

func controllerManagerArgs(o options, p *pkiFiles, kubeconfig string) []string {
	args := []string{
		"--kubeconfig=" + kubeconfig,
		"--authentication-kubeconfig=" + kubeconfig,
		"--authorization-kubeconfig=" + kubeconfig,
		// The apiserver runs without a front proxy, so there is no
		// requestheader CA to look up (the lookup would only log errors).
		"--authentication-skip-lookup=true",
		"--leader-elect=false",
		"--controllers=" + o.controllers,
		"--service-account-private-key-file=" + p.saKey,
		"--root-ca-file=" + p.caFile,
		"--bind-address=127.0.0.1",
		"--cluster-name=sametag-test",
		"--profiling=false",
		fmt.Sprintf("--v=%d", o.verbosity),
	}
	return append(args, strings.Fields(o.extraCM)...)
}

// freePort asks the kernel for an unused loopback port.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func mustURL(s string) url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err) // only called with constant-shaped URLs built here
	}
	return *u
}

func step(msg string) {
	fmt.Fprintf(os.Stderr, "controlplane: %s %s\n", time.Now().UTC().Format("15:04:05"), msg)
}

var errStopped = errors.New("stopped by signal")
