// Command debpkg builds mailguard's Debian package from dist/nfpm.yaml with
// nfpm, as a library: scripts/build-deb runs it. It is a module of its own
// so that the packager's dependencies stay out of mailguard's.
//
//	go run . -root REPOSITORY -config dist/nfpm.yaml -out FILE.deb
//
// The configuration's ${VARIABLES} come from the environment; its paths
// are relative to the repository's root.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb"
)

func main() {
	root := flag.String("root", "../..", "the repository's `FOLDER`")
	config := flag.String("config", "dist/nfpm.yaml", "nfpm configuration `FILE`, in the repository")
	out := flag.String("out", "", "package `FILE` to write (an absolute path)")
	flag.Parse()
	err := os.Chdir(*root)
	if err == nil {
		err = build(*config, *out)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "debpkg: %v\n", err)
		os.Exit(1)
	}
}

func build(config, out string) error {
	if out == "" {
		return fmt.Errorf("-out FILE is required")
	}
	cfg, err := nfpm.ParseFile(config)
	if err != nil {
		return err
	}
	info, err := cfg.Get("deb")
	if err != nil {
		return err
	}
	info = nfpm.WithDefaults(info)
	if err := nfpm.PrepareForPackager(info, "deb"); err != nil {
		return err
	}
	packager, err := nfpm.Get("deb")
	if err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	if err := packager.Package(info, f); err != nil {
		f.Close()
		os.Remove(out)
		return err
	}
	return f.Close()
}
