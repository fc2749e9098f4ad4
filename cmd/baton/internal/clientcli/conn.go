package clientcli

import (
	"errors"
	"fmt"
	"strings"

	"connectrpc.com/connect"

	"github.com/baton-run/baton/client"
	"github.com/baton-run/baton/cmd/baton/internal/config"
)

// packageConfig is the [client] section as package client takes it; the
// client splits a comma-separated client.scheduler itself.
func packageConfig(c config.ClientSection) client.Config {
	return client.Config{
		Schedulers: []string{c.Scheduler},
		CAFile:     c.CAFile,
		CertFile:   c.CertFile,
		KeyFile:    c.KeyFile,
		Token:      c.Token,
	}
}

// checkSchedulerAddr checks client.scheduler as the client will use it,
// without reading any file.
func checkSchedulerAddr(c config.ClientSection) error {
	if strings.TrimSpace(c.Scheduler) == "" {
		return errors.New("client.scheduler is empty: give --scheduler URL or set it in the client config")
	}
	_, err := packageConfig(c).BaseURLs()
	return err
}

// newClient builds the client the commands call the scheduler with. It
// reads the CA, certificate and key files, and dials nothing: the first
// call does.
func newClient(c config.ClientSection) (*client.Client, error) {
	if err := checkSchedulerAddr(c); err != nil {
		return nil, err
	}
	return client.New(packageConfig(c))
}

// explain adds to an error about a scheduler that cannot be reached where
// the CLI took its address from.
func explain(err error) error {
	var e *client.Error
	if !errors.As(err, &e) || !e.Unreachable {
		return err
	}
	return connect.NewError(e.Code, fmt.Errorf("%s (--scheduler, BATON_CLIENT_SCHEDULER or client.scheduler)", e.Message))
}
