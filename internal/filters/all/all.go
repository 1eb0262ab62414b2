// Package all links every filter into the program: importing a filter's
// package registers it. Adding a filter is its folder and one line here.
package all

import (
	_ "mailguard/internal/filter/access"
	_ "mailguard/internal/filter/attachments"
	_ "mailguard/internal/filter/capture"
	_ "mailguard/internal/filter/clamav"
	_ "mailguard/internal/filter/outbreak"
	_ "mailguard/internal/filter/quota"
	_ "mailguard/internal/filter/ratelimit"
	_ "mailguard/internal/filter/senders"
	_ "mailguard/internal/filter/virus"
)
