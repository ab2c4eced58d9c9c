// The three components: embedded etcd, kube-apiserver, kube-controller-manager.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/server/v3/embed"

	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	cmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	cmoptions "k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
)

// startEtcd starts a single-member etcd with its data in dir, on free loopback
// ports. fsync is off: the data is thrown away after the tests.
func startEtcd(dir string) (*embed.Etcd, string, error) {
	clientPort, err := freePort()
	if err != nil {
		return nil, "", err
	}
	peerPort, err := freePort()
	if err != nil {
		return nil, "", err
	}
	cfg := embed.NewConfig()
	cfg.Name = "sametag-test"
	cfg.Dir = dir
	cfg.UnsafeNoFsync = true
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{"stderr"}
	clientURL := fmt.Sprintf("http://127.0.0.1:%d", clientPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	cfg.ListenClientUrls = []url.URL{mustURL(clientURL)}
	cfg.AdvertiseClientUrls = []url.URL{mustURL(clientURL)}
	cfg.ListenPeerUrls = []url.URL{mustURL(peerURL)}
	cfg.AdvertisePeerUrls = []url.URL{mustURL(peerURL)}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", err
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, "", err
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, "", fmt.Errorf("not ready after 60s")
	}
	return e, clientURL, nil
}

// runAPIServer runs the upstream kube-apiserver command until it stops (it
// stops gracefully on SIGTERM/SIGINT, through its own signal handler).
func runAPIServer(args []string) error {
	cmd := apiserverapp.NewAPIServerCommand()
	cmd.SetArgs(args)
	return cmd.Execute()
}

// controllerManager is a parsed kube-controller-manager, ready to run.
type controllerManager struct {
	opts     *cmoptions.KubeControllerManagerOptions
	listener net.Listener
	certDir  string
}

// prepareControllerManager parses the controller-manager's flags. It must run
// before the apiserver command builds its flag set: the controller-manager's
// Flags() overrides a default of the process-wide feature gate
// (WatchListClient), which is refused once any flag set holds the gates.
func prepareControllerManager(args []string) (*controllerManager, error) {
	s, err := cmoptions.NewKubeControllerManagerOptions()
	if err != nil {
		return nil, err
	}
	all, disabled, aliases := cmapp.KnownControllers(), cmapp.ControllersDisabledByDefault(), cmapp.ControllerAliases()
	fs := pflag.NewFlagSet("kube-controller-manager", pflag.ContinueOnError)
	named := s.Flags(all, disabled, aliases)
	for _, f := range named.FlagSets {
		fs.AddFlagSet(f)
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	s.ParsedFlags = &named
	// Serve /healthz on a listener we own, so no port can be taken between
	// choosing it and binding it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.SecureServing.Listener = l
	s.SecureServing.BindPort = l.Addr().(*net.TCPAddr).Port
	certDir, err := os.MkdirTemp("", "sametag-kcm-")
	if err != nil {
		l.Close()
		return nil, err
	}
	s.SecureServing.ServerCert.CertDirectory = certDir
	return &controllerManager{opts: s, listener: l, certDir: certDir}, nil
}

// run runs kube-controller-manager until ctx is done. It follows what the
// upstream command's RunE does, with our context instead of
// context.Background() so that it can be stopped.
func (cm *controllerManager) run(ctx context.Context) error {
	defer os.RemoveAll(cm.certDir)
	s := cm.opts
	if err := s.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	all, disabled, aliases := cmapp.KnownControllers(), cmapp.ControllersDisabledByDefault(), cmapp.ControllerAliases()
	c, err := s.Config(ctx, all, disabled, aliases)
	if err != nil {
		return err
	}
	return cmapp.Run(ctx, c.Complete())
}

// waitReady polls the apiserver's /readyz with the admin token until it
// answers 200, the apiserver exits, or a signal arrives.
func waitReady(ctx context.Context, server string, p *pkiFiles, apiDone <-chan error, sigs <-chan os.Signal) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.caPEM)
	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	deadline := time.Now().Add(3 * time.Minute)
	var last string
	for time.Now().Before(deadline) {
		select {
		case err := <-apiDone:
			return fmt.Errorf("exited before ready: %v", err)
		case <-sigs:
			return errStopped
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, server+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+p.adminToken)
		resp, err := client.Do(req)
		if err != nil {
			last = err.Error()
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
		last = resp.Status
	}
	return fmt.Errorf("not ready after 3m (last: %s)", last)
}
