// pause is the sandbox ("infra") process of every pod on the dev cluster's
// real node: it holds the pod's namespaces, reaps orphaned children (it is
// PID 1 when the pod shares its PID namespace) and exits 0 on SIGINT or
// SIGTERM, like upstream's pause.c. Built static (CGO off) into an image FROM
// scratch, so no registry is needed.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Println("loraplane pause")
		return
	}
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
