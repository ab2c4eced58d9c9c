package main

// The supervisor: configuration files, child processes, readiness.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/client-go/tools/clientcmd"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// runOptions are the flags of `node run`.
type runOptions struct {
	dir              string
	adminKubeconfig  string
	apiserverVia     string
	containerdConfig string
	nodeName         string
	nodeIP           string
	podCIDR          string
	dnsListen        string
	clusterDNS       string
	cgroupRoot       string
	readyFile        string
	verbosity        int
}

func runMain(args []string) int {
	var o runOptions
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.StringVar(&o.dir, "dir", "", "state directory (containerd, kubelet, logs) (required)")
	fs.StringVar(&o.adminKubeconfig, "kubeconfig", "", "the control plane's admin kubeconfig (required)")
	fs.StringVar(&o.apiserverVia, "apiserver-via", "", "host:port where the node reaches the apiserver (the host-side forwarder) (required)")
	fs.StringVar(&o.containerdConfig, "containerd-config", "", "containerd config file (tests/node/containerd.sh config) (required)")
	fs.StringVar(&o.nodeName, "node-name", "sametag-node", "the Node's name")
	fs.StringVar(&o.nodeIP, "node-ip", "", "the node's address (on its link to the host) (required)")
	fs.StringVar(&o.podCIDR, "pod-cidr", "10.244.0.0/24", "the pod network (the CNI bridge's range)")
	fs.StringVar(&o.dnsListen, "dns-listen", "0.0.0.0:53", "where cluster DNS listens (inside the node's network namespace)")
	fs.StringVar(&o.clusterDNS, "cluster-dns", "10.244.0.1", "the DNS server address pods get (the bridge gateway)")
	fs.StringVar(&o.cgroupRoot, "cgroup-root", "/sametag-node", "kubelet cgroup root (created by node.sh in every v1 hierarchy)")
	fs.StringVar(&o.readyFile, "ready-file", "", "written once the Node is Ready")
	fs.IntVar(&o.verbosity, "v", 1, "klog verbosity of the components")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	for name, v := range map[string]string{"dir": o.dir, "kubeconfig": o.adminKubeconfig,
		"apiserver-via": o.apiserverVia, "containerd-config": o.containerdConfig, "node-ip": o.nodeIP} {
		if v == "" {
			fmt.Fprintf(os.Stderr, "node run: --%s is required\n", name)
			return 2
		}
	}
	if err := run(o); err != nil {
		fmt.Fprintf(os.Stderr, "node run: %v\n", err)
		return 1
	}
	return 0
}

func run(o runOptions) error {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return err
	}
	if init, err := os.Readlink("/proc/1/ns/mnt"); err == nil && init == self {
		// The kubelet's volume mounts and the sysctl shims below must stay
		// out of the host's mount table.
		return errors.New("run me in a private mount namespace (unshare -m --propagation private), as tests/node/node.sh does")
	}
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return err
	}
	o.dir = dir
	for _, d := range []string{"log", "kubelet", "pod-logs", "sysctl"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := shimKernelTunables(filepath.Join(dir, "sysctl")); err != nil {
		return fmt.Errorf("sysctl shims: %w", err)
	}
	nodeKubeconfig := filepath.Join(dir, "node.kubeconfig")
	if err := writeNodeKubeconfig(o.adminKubeconfig, nodeKubeconfig, "https://"+o.apiserverVia); err != nil {
		return fmt.Errorf("node kubeconfig: %w", err)
	}
	kubeletConfig := filepath.Join(dir, "kubelet.yaml")
	sock := containerdSocket(o.containerdConfig)
	if sock == "" {
		return fmt.Errorf("%s: no [grpc] address", o.containerdConfig)
	}
	if err := os.WriteFile(kubeletConfig, []byte(kubeletConfigYAML(o, sock)), 0o644); err != nil {
		return err
	}

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	exited := make(chan string, 8)
	var children []*child
	defer func() { stopAll(children, sock) }()

	step("starting containerd")
	cd, err := startChild(dir, "containerd", exited, "containerd", "--config", o.containerdConfig)
	if err != nil {
		return err
	}
	children = append(children, cd)
	if err := waitSocket(sock, 30*time.Second, exited); err != nil {
		return fmt.Errorf("containerd: %w", err)
	}

	self, err = os.Executable()
	if err != nil {
		return err
	}
	v := fmt.Sprintf("--v=%d", o.verbosity)
	step("starting kubelet, kube-scheduler, kube-proxy")
	for _, c := range []struct {
		name string
		args []string
	}{
		{"kubelet", []string{"kubelet", "--config=" + kubeletConfig, "--kubeconfig=" + nodeKubeconfig,
			"--hostname-override=" + o.nodeName, "--node-ip=" + o.nodeIP,
			"--root-dir=" + filepath.Join(dir, "kubelet"), v}},
		{"kube-scheduler", []string{"scheduler", "--kubeconfig=" + nodeKubeconfig,
			"--authentication-kubeconfig=" + nodeKubeconfig, "--authorization-kubeconfig=" + nodeKubeconfig,
			"--leader-elect=false", "--secure-port=0", v}},
		{"kube-proxy", []string{"proxy", "--kubeconfig=" + nodeKubeconfig, "--hostname-override=" + o.nodeName,
			"--proxy-mode=iptables", "--cluster-cidr=" + o.podCIDR,
			// Conntrack table sizes are global sysctls: leave the host's alone.
			"--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0",
			"--conntrack-tcp-timeout-close-wait=0",
			"--healthz-bind-address=127.0.0.1:10256", "--metrics-bind-address=127.0.0.1:10249", v}},
	} {
		ch, err := startChild(dir, c.name, exited, self, c.args...)
		if err != nil {
			return err
		}
		children = append(children, ch)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cs, err := clientFor(nodeKubeconfig)
	if err != nil {
		return err
	}
	dnsErr := make(chan error, 1)
	go func() { dnsErr <- serveDNS(ctx, cs, o.dnsListen) }()
	apiErr := make(chan error, 1)
	go func() { apiErr <- publishAPIServerEndpoint(ctx, cs, o.apiserverVia) }()

	readyCtx, readyCancel := context.WithTimeout(ctx, 3*time.Minute)
	readyDone := make(chan error, 1)
	go func() { readyDone <- waitNodeReady(readyCtx, cs, o.nodeName) }()
	for ready := false; ; {
		select {
		case err := <-readyDone:
			readyCancel()
			if err != nil {
				return fmt.Errorf("node %s not Ready: %w (logs in %s/log)", o.nodeName, err, dir)
			}
			ready = true
			if err := writeReady(o, nodeKubeconfig, sock); err != nil {
				return err
			}
			step("READY node " + o.nodeName)
			fmt.Printf("READY node=%s\n", o.nodeName)
		case name := <-exited:
			readyCancel()
			return fmt.Errorf("%s exited (log: %s/log/%s.log)", name, dir, name)
		case err := <-dnsErr:
			readyCancel()
			return fmt.Errorf("cluster DNS: %w", err)
		case err := <-apiErr:
			readyCancel()
			return fmt.Errorf("kubernetes endpoint: %w", err)
		case <-sigs:
			readyCancel()
			step(fmt.Sprintf("signal received (ready=%v), stopping", ready))
			if o.readyFile != "" {
				_ = os.Remove(o.readyFile)
			}
			return nil
		}
	}
}

// writeReady writes the ready marker (JSON) atomically.
func writeReady(o runOptions, kubeconfig, sock string) error {
	if o.readyFile == "" {
		return nil
	}
	b, _ := json.MarshalIndent(map[string]any{
		"node": o.nodeName, "nodeIP": o.nodeIP, "podCIDR": o.podCIDR, "clusterDNS": o.clusterDNS,
		"kubeconfig": kubeconfig, "containerd": sock, "pid": os.Getpid(),
	}, "", "  ")
	tmp := o.readyFile + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, o.readyFile)
}

// writeNodeKubeconfig copies the admin kubeconfig with the server replaced by
// the forwarder's address. The apiserver's certificate names localhost, not
// the forwarder's IP, so the TLS server name is pinned to it.
func writeNodeKubeconfig(admin, out, server string) error {
	cfg, err := clientcmd.LoadFromFile(admin)
	if err != nil {
		return err
	}
	for _, c := range cfg.Clusters {
		c.Server = server
		c.TLSServerName = "localhost"
	}
	return clientcmd.WriteToFile(*cfg, out)
}

// containerdSocket reads [grpc] address from a containerd config file.
func containerdSocket(config string) string {
	b, err := os.ReadFile(config)
	if err != nil {
		return ""
	}
	inGRPC := false
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "[") {
			inGRPC = line == "[grpc]"
			continue
		}
		if inGRPC && strings.HasPrefix(line, "address") {
			_, v, _ := strings.Cut(line, "=")
			return strings.Trim(strings.TrimSpace(v), `"`)
		}
	}
	return ""
}

func waitSocket(path string, timeout time.Duration, exited <-chan string) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil
		}
		select {
		case name := <-exited:
			return fmt.Errorf("%s exited", name)
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("no socket at %s after %s", path, timeout)
}

func step(msg string) {
	fmt.Fprintf(os.Stderr, "node: %s %s\n", time.Now().UTC().Format("15:04:05"), msg)
}

// child is one supervised process.
type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

func startChild(dir, name string, exited chan<- string, bin string, args ...string) (*child, error) {
	logf, err := os.OpenFile(filepath.Join(dir, "log", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A child never outlives the supervisor, even if it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(c.done)
		select {
		case exited <- name:
		default:
		}
	}()
	return c, nil
}

// stopAll stops the components (reverse start order), then every container
// containerd runs, then containerd itself.
func stopAll(children []*child, sock string) {
	for i := len(children) - 1; i >= 0; i-- {
		c := children[i]
		if c.name == "containerd" {
			removeSandboxes(sock)
			killContainers(sock)
		}
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
			<-c.done
		}
	}
}

// killContainers kills every task of the private containerd; its shims are
// then reaped by tests/node/node.sh down.
func killContainers(sock string) {
	out, err := exec.Command("ctr", "--address", sock, "-n", "k8s.io", "tasks", "ls", "-q").Output()
	if err != nil {
		return
	}
	for _, id := range strings.Fields(string(out)) {
		_ = exec.Command("ctr", "--address", sock, "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id).Run()
	}
}

// removeSandboxes stops and removes every pod sandbox through the CRI (the
// kubelet is stopped by then, so none comes back): containerd tears down
// each pod's network (CNI DEL) and deletes its network namespace
// (/var/run/netns/cni-*), which killing containerd would leave behind.
func removeSandboxes(sock string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		step("CRI: " + err.Error())
		return
	}
	defer conn.Close()
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	list, err := rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		step("CRI: listing pod sandboxes: " + err.Error())
		return
	}
	removed := 0
	for _, sb := range list.Items {
		if _, err := rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.Id}); err != nil {
			step(fmt.Sprintf("CRI: stopping sandbox %s: %v", sb.Id, err))
			continue
		}
		if _, err := rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.Id}); err != nil {
			step(fmt.Sprintf("CRI: removing sandbox %s: %v", sb.Id, err))
			continue
		}
		removed++
	}
	step(fmt.Sprintf("removed %d of %d pod sandboxes", removed, len(list.Items)))
}
