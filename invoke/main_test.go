package invoke_test

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// TestRestartAfterKill re-executes this binary as the process that
	// gets killed; in that role it runs a scheduler and never returns.
	if path := os.Getenv(killChildEnv); path != "" {
		os.Exit(runKillChild(path))
	}
	goleak.VerifyTestMain(m)
}
