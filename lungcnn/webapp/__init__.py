"""The clinicians' page's safety logic, free of layout: sign-in (OIDC or a password), who may reach the page
without one (loopback only), and the launcher behind `make app`."""
