package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ociImage is what the tests check in an OCI archive images.sh built.
type ociImage struct {
	configDigest string
	user         string
	entrypoint   []string
	files        []string // regular files and symlinks in the layers
}

// imagesDir is where images.sh put the archives node.sh imported.
func imagesDir(t *testing.T) string {
	t.Helper()
	d := os.Getenv("SAMETAG_NODE_IMAGE_DIR")
	if d == "" {
		t.Fatal("SAMETAG_NODE_IMAGE_DIR is not set (node.sh's env file sets it)")
	}
	return d
}

// readOCIArchive reads the image of an OCI image-layout tar: its config
// digest, user, entrypoint and the files its layers hold.
func readOCIArchive(t *testing.T, path string) ociImage {
	t.Helper()
	blobs := map[string][]byte{}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		blobs[strings.TrimPrefix(h.Name, "./")] = b
	}
	blob := func(digest string) []byte {
		b, ok := blobs["blobs/"+strings.Replace(digest, ":", "/", 1)]
		if !ok {
			t.Fatalf("%s: blob %s missing", path, digest)
		}
		return b
	}
	type desc struct {
		Digest string `json:"digest"`
	}
	var index struct{ Manifests []desc }
	if err := json.Unmarshal(blobs["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("%s: index.json: %v (%d manifests)", path, err, len(index.Manifests))
	}
	var manifest struct {
		Config desc
		Layers []desc
	}
	if err := json.Unmarshal(blob(index.Manifests[0].Digest), &manifest); err != nil {
		t.Fatalf("%s: manifest: %v", path, err)
	}
	var config struct {
		Config struct {
			User       string
			Entrypoint []string
		} `json:"config"`
	}
	if err := json.Unmarshal(blob(manifest.Config.Digest), &config); err != nil {
		t.Fatalf("%s: config: %v", path, err)
	}
	img := ociImage{configDigest: manifest.Config.Digest, user: config.Config.User, entrypoint: config.Config.Entrypoint}
	for _, l := range manifest.Layers {
		var r io.Reader = bytes.NewReader(blob(l.Digest))
		if gz, err := gzip.NewReader(bytes.NewReader(blob(l.Digest))); err == nil {
			r = gz
		}
		lt := tar.NewReader(r)
		for {
			h, err := lt.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: layer %s: %v", path, l.Digest, err)
			}
			if h.Typeflag != tar.TypeDir {
				img.files = append(img.files, "/"+strings.TrimPrefix(h.Name, "./"))
			}
		}
	}
	sort.Strings(img.files)
	return img
}

// containerPID is the host PID of a running container's init process, from
// the node's containerd (the node shares the host's PID namespace).
func containerPID(t *testing.T, containerID string) int {
	t.Helper()
	sock := os.Getenv("SAMETAG_CONTAINERD_SOCK")
	if sock == "" {
		t.Fatal("SAMETAG_CONTAINERD_SOCK is not set")
	}
	out, err := run(t, 30*time.Second, "", "ctr", "--address", sock, "-n", "k8s.io", "task", "ls")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == containerID && f[2] == "RUNNING" {
			pid, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatalf("ctr task ls: %q", line)
			}
			return pid
		}
	}
	t.Fatalf("container %s is not a running task:\n%s", containerID, out)
	return 0
}

// procIDs is the "Uid:" and "Gid:" lines of /proc/PID/status (real,
// effective, saved, filesystem).
func procIDs(t *testing.T, pid int) (uid, gid []string) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Uid:"); ok {
			uid = strings.Fields(v)
		}
		if v, ok := strings.CutPrefix(line, "Gid:"); ok {
			gid = strings.Fields(v)
		}
	}
	return uid, gid
}

// assertReleaseImage checks that a running container is the image built
// from the release Containerfile (images.sh's archive `crate`.tar, by
// config digest), that the image holds nothing but the binary and the CA
// roots (FROM scratch: no shell, and exec of one fails), and that its
// process runs as uid/gid 65532.
func (e env) assertReleaseImage(t *testing.T, ns, pod, container, crate string) {
	t.Helper()
	img := readOCIArchive(t, filepath.Join(imagesDir(t), crate+".tar"))
	wantFiles := []string{"/etc/ssl/certs/ca-certificates.crt", "/usr/local/bin/" + crate}
	if strings.Join(img.files, " ") != strings.Join(wantFiles, " ") {
		t.Fatalf("%s image holds %v, want exactly %v", crate, img.files, wantFiles)
	}
	if img.user != "65532:65532" || len(img.entrypoint) != 1 || img.entrypoint[0] != "/usr/local/bin/"+crate {
		t.Fatalf("%s image config: user %q, entrypoint %v", crate, img.user, img.entrypoint)
	}

	var p struct {
		Status struct {
			ContainerStatuses     []containerStatus `json:"containerStatuses"`
			InitContainerStatuses []containerStatus `json:"initContainerStatuses"`
		} `json:"status"`
	}
	e.jsonGet(t, &p, "-n", ns, "get", "pod", pod)
	var cs *containerStatus
	for _, s := range append(p.Status.ContainerStatuses, p.Status.InitContainerStatuses...) {
		if s.Name == container {
			cs = &s
			break
		}
	}
	if cs == nil {
		t.Fatalf("pod %s/%s has no container %s", ns, pod, container)
	}
	if !strings.HasSuffix(cs.ImageID, img.configDigest) {
		t.Fatalf("%s/%s %s runs image %s (%s), not the archive's %s", ns, pod, container, cs.Image, cs.ImageID, img.configDigest)
	}
	id, ok := strings.CutPrefix(cs.ContainerID, "containerd://")
	if !ok {
		t.Fatalf("%s/%s %s: container id %q", ns, pod, container, cs.ContainerID)
	}
	uid, gid := procIDs(t, containerPID(t, id))
	if strings.Join(uid, " ") != "65532 65532 65532 65532" || strings.Join(gid, " ") != "65532 65532 65532 65532" {
		t.Fatalf("%s/%s %s runs as uid %v gid %v, want 65532", ns, pod, container, uid, gid)
	}
	out, err := e.kTry(t, "-n", ns, "exec", pod, "-c", container, "--", "/bin/sh", "-c", "true")
	if err == nil {
		t.Fatalf("%s/%s %s: a shell ran in a FROM scratch image: %q", ns, pod, container, out)
	}
	if !strings.Contains(err.Error(), "no such file or directory") && !strings.Contains(err.Error(), "not found") {
		t.Fatalf("%s/%s %s: exec of /bin/sh failed otherwise than for a missing shell: %v", ns, pod, container, err)
	}
	t.Logf("%s/%s %s: image %s, uid/gid 65532, files %v, no shell (%s)", ns, pod, container, img.configDigest[:19], img.files, lastLine(err.Error()))
}

type containerStatus struct {
	Name        string `json:"name"`
	Image       string `json:"image"`
	ImageID     string `json:"imageID"`
	ContainerID string `json:"containerID"`
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndex(s, "\n"); i >= 0 {
		return s[i+1:]
	}
	return s
}
