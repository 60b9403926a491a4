require ["fileinto", "x-no-such-extension"];
keep;
