// Command etcd is etcd's server, built from go.etcd.io/etcd/server/v3 so that it
// comes from the Go module proxy like the Kubernetes binaries beside it.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
