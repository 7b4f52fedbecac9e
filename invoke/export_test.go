package invoke

import "time"

// SetAverages sets target's measured handler and Lease times, from which
// the scheduler decides how many tasks it leases ahead of free slots.
func SetAverages(s *Scheduler, target string, run, lease time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.targets[target]
	t.runTime, t.leaseTime = run, lease
}
