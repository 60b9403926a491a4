require ["reject", "fileinto"];
fileinto "First";
reject "too late";
