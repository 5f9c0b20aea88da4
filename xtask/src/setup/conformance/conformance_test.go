// Package conformance runs the Gateway API conformance suite exactly as the suite's own
// conformance_test.go runs it: every setting is one of the suite's flags, given to the binary.
// conformance.sh builds it into a test binary; tests/tests/conformance.rs runs that.
package conformance

import (
	"testing"

	"sigs.k8s.io/gateway-api/conformance"
)

func TestConformance(t *testing.T) {
	conformance.RunConformance(t)
}
