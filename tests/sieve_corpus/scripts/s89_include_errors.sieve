require ["include", "fileinto"];
include :personal "common";
include :personal "does-not-exist";
fileinto "Never";
