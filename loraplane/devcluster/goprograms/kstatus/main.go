// kstatus prints what the kstatus library (sigs.k8s.io/cli-utils/pkg/kstatus/status,
// the health model of Argo CD's and Flux's kstatus checks) computes for each
// object it reads: a JSON object, a JSON list of objects, or a Kubernetes
// List ({"items": [...]}) on stdin. One JSON line per object:
// {"kind", "namespace", "name", "generation", "status", "message", "error"}.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type line struct {
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace"`
	Name       string `json:"name"`
	Generation int64  `json:"generation"`
	Status     string `json:"status"`
	Message    string `json:"message"`
	Error      string `json:"error,omitempty"`
}

// objects splits the input into single objects, decoded as client-go does
// (numbers become int64, as the library's accessors expect).
func objects(data []byte) ([]*unstructured.Unstructured, error) {
	var raws []json.RawMessage
	if err := json.Unmarshal(data, &raws); err != nil {
		var one struct {
			Items []json.RawMessage `json:"items"`
		}
		if err := json.Unmarshal(data, &one); err != nil {
			return nil, err
		}
		raws = one.Items
		if raws == nil {
			raws = []json.RawMessage{data}
		}
	}
	out := make([]*unstructured.Unstructured, 0, len(raws))
	for _, raw := range raws {
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(raw); err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, nil
}

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err == nil {
		var objs []*unstructured.Unstructured
		objs, err = objects(data)
		if err == nil {
			out := json.NewEncoder(os.Stdout)
			for _, u := range objs {
				l := line{Kind: u.GetKind(), Namespace: u.GetNamespace(), Name: u.GetName(),
					Generation: u.GetGeneration()}
				res, cerr := status.Compute(u)
				if cerr != nil {
					l.Error = cerr.Error()
				} else {
					l.Status, l.Message = string(res.Status), res.Message
				}
				if err = out.Encode(l); err != nil {
					break
				}
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}
