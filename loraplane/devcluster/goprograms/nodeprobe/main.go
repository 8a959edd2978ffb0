// nodeprobe is a static program for checking a real node from inside a pod,
// without a base image: `serve` answers HTTP (pod IP, Service, logs),
// `whoami` asks the API server who the pod's projected ServiceAccount token
// is (through the in-cluster `kubernetes` Service, as client-go does), and
// `get URL` fetches a URL (pod-to-Service traffic).
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

func main() {
	cmd := "serve"
	if len(os.Args) > 1 {
		cmd = os.Args[1]
	}
	var err error
	switch cmd {
	case "serve":
		err = serve()
	case "whoami":
		var user string
		user, err = whoami()
		if err == nil {
			fmt.Println(user)
		}
	case "get":
		if len(os.Args) < 3 {
			err = fmt.Errorf("usage: nodeprobe get URL")
			break
		}
		var body string
		body, err = get(os.Args[2])
		fmt.Print(body)
	default:
		err = fmt.Errorf("unknown command %q (serve, whoami, get URL)", cmd)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "nodeprobe:", err)
		os.Exit(1)
	}
}

func serve() error {
	addr := os.Getenv("PROBE_ADDR")
	if addr == "" {
		addr = ":8080"
	}
	host, _ := os.Hostname()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Printf("request %s %s from %s\n", r.Method, r.URL.Path, r.RemoteAddr)
		fmt.Fprintf(w, "nodeprobe %s\n", host)
	})
	http.HandleFunc("/whoami", func(w http.ResponseWriter, r *http.Request) {
		user, err := whoami()
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		fmt.Fprintln(w, user)
	})
	fmt.Printf("nodeprobe serving on %s as %s\n", addr, host)
	return http.ListenAndServe(addr, nil)
}

func get(url string) (string, error) {
	client := http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(body), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(body), err
}

// whoami posts a SelfSubjectReview with the mounted token and returns the
// username the API server authenticated.
func whoami() (string, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return "", fmt.Errorf("KUBERNETES_SERVICE_HOST/PORT not set")
	}
	token, err := os.ReadFile(saDir + "/token")
	if err != nil {
		return "", err
	}
	caPEM, err := os.ReadFile(saDir + "/ca.crt")
	if err != nil {
		return "", err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return "", fmt.Errorf("no certificate in %s/ca.crt", saDir)
	}
	client := http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	url := "https://" + net.JoinHostPort(host, port) + "/apis/authentication.k8s.io/v1/selfsubjectreviews"
	review := []byte(`{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`)
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(review))
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return "", fmt.Errorf("POST %s: %s: %s", url, resp.Status, body)
	}
	var out struct {
		Status struct {
			UserInfo struct {
				Username string `json:"username"`
			} `json:"userInfo"`
		} `json:"status"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return "", err
	}
	return out.Status.UserInfo.Username, nil
}
