module loraplane.local/kstatus

go 1.22

// The kstatus library Argo CD and Flux read health with. kstatus_build.py
// builds main.go against this pin in a scratch module under the cache.
require sigs.k8s.io/cli-utils v0.37.2
