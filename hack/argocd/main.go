// Command argocd tests this project's Argo CD health checks and resource actions the way Argo CD
// runs them, on gopher-lua (the Lua VM Argo CD embeds), and renders the argocd-cm snippet.
//
//	go run . test ../../argocd/resource_customizations
//	go run . snippet ../../argocd/resource_customizations > ../../argocd/install/argocd-cm.yaml
//
// test runs every case of every health_test.yaml and action_test.yaml (Argo CD's own test file
// format), each with restricted and with open libraries, and exits 1 if any fails, naming the
// file and the case.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) != 3 || (os.Args[1] != "test" && os.Args[1] != "snippet") {
		fmt.Fprintln(os.Stderr, "usage: argocd test|snippet <resource_customizations directory>")
		os.Exit(2)
	}
	root := os.Args[2]
	if os.Args[1] == "snippet" {
		os.Exit(snippet(root))
	}
	os.Exit(test(root))
}

func test(root string) int {
	results, err := RunAll(root)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	failed := 0
	for _, r := range results {
		if r.Err != nil {
			failed++
		}
		fmt.Println(r)
	}
	if failed > 0 {
		fmt.Printf("Argo CD Lua: %d of %d cases failed\n", failed, len(results))
		return 1
	}
	fmt.Printf("Argo CD Lua: all %d cases passed (restricted and open libraries)\n", len(results))
	return 0
}

func snippet(root string) int {
	text, err := Snippet(root)
	if err == nil {
		err = CheckSnippet(text, root)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Print(text)
	return 0
}
